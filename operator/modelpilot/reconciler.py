"""One idempotent, level-based reconcile of a ModelDeployment, as one readable pipeline.

    get → parse spec → observe → resolve / analyse → plan → desired → apply → status → next delay

Every trigger (the object or a child changed, a registry or Prometheus answer came, a timer, the
operator started) calls the same `reconcile(namespace, name)`, which never relies on what the
previous trigger was. Only two steps do I/O beyond reading: `apply` (the only writes to children,
and never to an object this ModelDeployment does not control) and the status write. Resolution and
analysis ask tenant-chosen servers on the `outbound` thread, so a slow server never holds a worker.

Failure rules: registry unreachable → children untouched, the last resolved version keeps serving,
retried with backoff; unknown model/alias, bad credentials → a condition, nothing created; an invalid
spec → a condition naming the field; an object in the way → NameConflict, nothing touched; a write the
API server refuses → ApplyFailed naming the object, retried with capped backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from . import metrics
from .analysis import Analyses
from .autoscaling import engine_in_effect
from .cache import Cache
from .canary_state import CanaryState
from .checks import PeriodicChecks
from .children import apply_children
from .config import Settings
from .desired import desired_children
from .driftcheck import drift_check
from .events import EventSink
from .kube import Kube, KubeError, merge_patch
from .names import API_VERSION, CANARY, GATEWAY_API_VERSION, KIND, NEWEST, STABLE, Owner, service_url
from .observe import KEDA_API_VERSION, RULE_API_VERSION, ChildKey, KindDiscovery, observe
from .outbound import Outbound
from .plan import Resolved, decide
from .registry import ResolvedModel
from .resolver import Key, Resolution, Resolver
from .spec import DeploymentSpec, InvalidSpec, parse_spec
from .status import Facts, Report, build_status, model_age
from .thresholds import latency_check
from .uri import ModelRef, RefKind
from .workqueue import Retry

log = logging.getLogger(__name__)

#: How soon a ModelDeployment blocked by a name conflict looks again (nothing tells it the clash is gone).
CONFLICT_RETRY_SECONDS = 10.0


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, enqueue: Callable[[Key], None] = lambda key: None,
                 outbound: Outbound | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, cache: Cache | None = None,
                 events: EventSink | None = None) -> None:
        self.kube = kube
        #: Where Events go: an `EventRecorder` writes them off the reconcile's path; by default, at once.
        self.events: EventSink = events or kube
        #: The watches' state (reads without requests); without one, every read is a GET.
        self.cache = cache
        self.reader = cache if cache is not None else kube
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.outbound = outbound or Outbound(per_host=settings.outbound_per_host)
        self.resolver = Resolver(self.outbound, settings, kube.read_secret, enqueue, clock)
        self.analyses = Analyses(self.outbound, settings, enqueue)
        self.thresholds = PeriodicChecks("thresholds", latency_check, self.outbound, settings, enqueue)
        self.drift = PeriodicChecks("drift", drift_check, self.outbound, settings, enqueue)
        # optional CRDs: the Gateway API's HTTPRoute, the Prometheus Operator's PrometheusRule, KEDA's ScaledObject
        self.gateway = KindDiscovery(kube, clock, GATEWAY_API_VERSION, "httproutes")
        self.rules = KindDiscovery(kube, clock, RULE_API_VERSION, "prometheusrules")
        self.keda = KindDiscovery(kube, clock, KEDA_API_VERSION, "scaledobjects")

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Converge one ModelDeployment; return seconds until it wants another look (None: never)."""
        key = (namespace, name)
        obj = self.reader.get(API_VERSION, KIND, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.forget(key)  # children carry owner references: the garbage collector removes them
            return None
        meta = obj["metadata"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        facts = Facts(owner, int(meta.get("generation", 1)), obj.get("status") or {}, utc_now(),
                      service_url(owner, self.settings.cluster_domain))
        try:
            spec = parse_spec(obj.get("spec") or {}, self.settings)
        except InvalidSpec as exc:
            self.forget(key)
            self._report(obj, build_status(replace(facts, spec_error=str(exc))))
            return None

        world = observe(self.reader, owner, self.gateway.served(), self.rules.served(), self.keda.served())
        stable, canary = self._resolve(key, spec)
        newest = self._newest(key, spec)
        resolved = _resolved(spec, stable, canary, facts.old)
        wall, state = self.wall_clock(), CanaryState.from_status(facts.old.get("canary"))
        verdict = self.analyses.due(key, spec, state, resolved.candidate, wall, resolved.current)
        decision = decide(spec, world, resolved, state, facts.old.get("rejected") or {},
                          dict(meta.get("annotations") or {}), verdict, wall)
        desired = desired_children(owner, spec, decision, self.settings, world)
        applied = apply_children(self.kube, world, desired, self.settings.field_manager)
        self._remember(owner, applied.objects)
        serving = decision.rollout.stable
        thresholds, next_latency = self.thresholds.latest(key, spec.latency, serving, wall)
        drift, next_drift = self.drift.latest(key, spec.drift, serving, wall)
        self._report(obj, build_status(replace(
            facts, model_uri=spec.model_uri, canary_spec=spec.canary, problem=stable.problem, pending=stable.pending,
            canary_problem=canary.problem if canary else None, resolved_via=stable.via, decision=decision,
            applied=applied, max_model_age=spec.max_model_age_seconds, newest=newest.resolved if newest else None,
            latency=spec.latency, latency_verdict=thresholds, drift=spec.drift is not None, drift_verdict=drift,
            autoscaling=engine_in_effect(spec.autoscaling, world.keda))))
        if serving is not None and applied.failure is None and not applied.conflicts:
            metrics.PER_MODEL.set(namespace, name, serving.version, serving.registered_epoch)
        running = decision.canary_status
        metrics.PER_MODEL.set_canary(namespace, name, running.version if running else None,
                                     (running.mirror_percent or running.weight) if running else 0)
        metrics.PER_MODEL.set_threshold(namespace, name, spec.latency.max_p99_latency_ms if spec.latency else None)

        if applied.failure is not None:
            raise Retry(f"the API server refused {applied.failure[0]}")
        # A healthy answer the refresher follows needs no timer here: it enqueues us when it changes.
        now = self.clock()
        delays = [self.settings.resync_seconds]
        for track, r in ((STABLE, stable), (CANARY, canary)):
            if r is not None and (r.problem is not None or r.pending or not self.resolver.following(key, track)):
                delays.append(r.next_at - now)
        if decision.rollout.requeue is not None:
            delays.append(decision.rollout.requeue)
        if applied.conflicts:
            delays.append(CONFLICT_RETRY_SECONDS)
        delays += [d for d in (next_latency, next_drift) if d is not None]
        if spec.max_model_age_seconds is not None:
            for version in (serving, newest.resolved if newest else None):
                age = model_age(version, facts.now) if version is not None else None
                if age is not None and age <= spec.max_model_age_seconds:
                    delays.append(spec.max_model_age_seconds - age + 1)  # the moment it turns stale
        return max(min(delays), 0.5)

    def _resolve(self, key: Key, spec: DeploymentSpec) -> tuple[Resolution, Resolution | None]:
        stable = self.resolver.lookup(key, STABLE, spec, spec.model_uri, spec.model)
        canary = spec.canary
        if canary is None or canary.model is None or not canary.model_uri:
            self.resolver.answers.unfollow(key, CANARY)
            return stable, None
        return stable, self.resolver.lookup(key, CANARY, spec, canary.model_uri, canary.model)

    def _newest(self, key: Key, spec: DeploymentSpec) -> Resolution | None:
        """The registry's newest version of the served model, while staleness is watched: a newer version
        left unserved for longer than maxModelAge is reported. Its failures are not the tenant's problem
        to read in status (the stable answer reports the registry); it is simply asked again."""
        if spec.max_model_age_seconds is None or spec.model.kind is RefKind.LATEST:
            self.resolver.answers.unfollow(key, NEWEST)
            return None
        latest = ModelRef(spec.model.name, RefKind.LATEST)
        return self.resolver.lookup(key, NEWEST, spec, str(latest), latest)

    def _report(self, obj: dict[str, Any], report: Report) -> None:
        """Write the status (only when it changed) and record the events."""
        meta, old = obj["metadata"], obj.get("status") or {}
        if any(old.get(k) != v for k, v in report.status.items()):
            # each status field whole: what a field no longer has goes too (top-level fields the report
            # leaves out are kept, as before)
            patch = {k: merge_patch(old.get(k), v) for k, v in report.status.items()}
            try:
                answer = self.kube.patch_status(API_VERSION, KIND, meta["namespace"], meta["name"], patch,
                                                self.settings.field_manager)
                if answer and self.cache is not None:
                    self.cache.put(API_VERSION, KIND, answer, ours=True)  # or the next look would write it again
            except KubeError as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report to
                    raise
        now = utc_now()
        for type_, reason, message in report.events:
            counter = {"RolledBack": metrics.ROLLBACKS, "Promoted": metrics.PROMOTIONS,
                       "VersionChanged": metrics.VERSION_CHANGES}.get(reason)
            if counter is not None:
                counter.inc()
            log.info("%s %s/%s: %s", reason, meta["namespace"], meta["name"], message)
            self.events.create_event(obj, type_, reason, message, self.settings.field_manager, now)

    def _remember(self, owner: Owner, objects: dict[ChildKey, dict[str, Any] | None]) -> None:
        """Our writes' answers into the cache, ahead of their watch events. Never someone else's object:
        no watch would tell the cache when it goes away."""
        if self.cache is None:
            return
        for (api_version, kind, name), obj in objects.items():
            if obj is None:
                self.cache.remove(api_version, kind, owner.namespace, name)
            elif owner.controls(obj):
                self.cache.put(api_version, kind, obj, ours=True)

    def forget(self, key: Key) -> None:
        self.resolver.forget(key)
        self.analyses.forget(key)
        self.thresholds.forget(key)
        self.drift.forget(key)
        metrics.PER_MODEL.remove(*key)


def _resolved(spec: DeploymentSpec, stable: Resolution, canary: Resolution | None, old: dict[str, Any]) -> Resolved:
    """What each URI points at now; while the registry cannot answer, what the status says it did."""
    previous: dict[str, Any] = old.get("model") or {}
    current = ResolvedModel.from_status(previous) if previous.get("version") else None
    target = stable.resolved
    if target is None and previous.get("uri") == spec.model_uri and current is not None:
        target = current  # registry trouble after a restart: keep serving what the status says
    fresh = stable.resolved if stable.problem is None else None
    if spec.canary is None:
        candidate, uri = None, spec.model_uri
    elif canary is not None and spec.canary.model_uri:
        # a progressive rollout gets no candidate while its resolution fails: it pauses instead
        usable = canary.problem is None or not spec.canary.progressive
        candidate, uri = (canary.resolved if usable else None), spec.canary.model_uri
    else:
        candidate, uri = fresh, spec.model_uri
    return Resolved(target=target, current=current, candidate=candidate, candidate_uri=uri,
                    current_uri=str(previous.get("uri") or spec.model_uri))
