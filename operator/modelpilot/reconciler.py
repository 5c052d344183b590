"""One idempotent, level-based reconcile of a ModelDeployment.

Every trigger (the object changed, a child Deployment changed, the refresh timer fired, the operator
started) calls the same `Reconciler.reconcile(namespace, name)`. It reads the current object, resolves
the model URI when a resolution is due, renders the children, applies them with server-side apply,
and writes the status; it returns when it wants to be called again. It never relies on what the
previous trigger was, so missing or repeated triggers are harmless.

Failure rules (from the product's promises):
- registry unreachable → children are left as they are (the last resolved version keeps serving), a
  condition names the error, and the resolution is retried with exponential backoff;
- unknown model/alias/version, bad credentials → a condition with a clear reason, nothing created;
- an invalid spec → a condition naming the field; nothing is retried until the spec changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import metrics, render
from .analysis import Prometheus, evaluate
from .canary import (
    PAUSED,
    STARTING,
    Observed,
    Verdict,
    analysis_window,
    canary_replicas_for_route,
    effective_weight,
    split_replicas,
)
from .canary import Plan as CanaryPlan
from .canary import plan as canary_plan
from .config import Settings
from .kube import Kube, KubeError
from .registry import Credentials, RegistryClient, RegistryError, ResolvedModel
from .spec import CanarySpec, DeploymentSpec, InvalidSpec, parse_spec
from .status import (
    DEGRADED,
    MODEL_RESOLVED,
    PROGRESSING,
    Problem,
    Rollout,
    compute_conditions,
    condition,
    invalid_spec_conditions,
    merge_conditions,
)
from .uri import ModelRef

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RegistryFactory = Callable[[str, Credentials | None], RegistryClient]
#: How long the answer to "is the Gateway API installed?" is trusted.
GATEWAY_API_RECHECK_SECONDS = 60.0


@dataclass
class Resolution:
    """What the operator last learned from the registry for one ModelDeployment (kept in memory)."""

    #: (model URI, tracking URI, credentials Secret): a change of any forces a new resolution.
    identity: tuple[str, str, str | None]
    resolved: ResolvedModel | None
    problem: Problem | None
    #: monotonic time at which the next resolution is due.
    next_at: float
    failures: int = 0


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CredentialsInvalid(RegistryError):
    """The credentials Secret is missing or holds neither a token nor a username."""

    reason = "CredentialsSecretInvalid"
    transient = False


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        registry_factory: RegistryFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.registry_factory = registry_factory or (
            lambda uri, creds: RegistryClient(uri, creds, timeout=settings.registry_timeout_seconds))
        self._resolutions: dict[tuple[str, str, str], Resolution] = {}
        self._gateway_api: tuple[bool, float] = (False, -1.0)
        self._lock = threading.Lock()

    # -- resolution ------------------------------------------------------------------------------
    def _credentials(self, namespace: str, spec: DeploymentSpec) -> Credentials | None:
        if not spec.credentials_secret:
            return None
        data = self.kube.read_secret(namespace, spec.credentials_secret)
        if data is None:
            if spec.credentials_required:
                raise CredentialsInvalid(
                    f"Secret {spec.credentials_secret!r} named in spec.registry.credentialsSecretRef "
                    f"does not exist in namespace {namespace!r}")
            return None
        creds = Credentials(token=data.get("token") or None, username=data.get("username") or None,
                            password=data.get("password") or None)
        if not creds.token and not creds.username:
            raise CredentialsInvalid(f"Secret {spec.credentials_secret!r} has neither a 'token' key nor "
                                "'username'/'password' keys")
        return creds

    def _resolve(self, key: Key, spec: DeploymentSpec, uri: str, ref: ModelRef, track: str = "stable",
                 ) -> Resolution:
        """The cached resolution while it is fresh, else ask the registry (at most once per interval)."""
        identity = (uri, spec.tracking_uri, spec.credentials_secret)
        now = self.clock()
        cache_key = (*key, track)
        with self._lock:
            cached = self._resolutions.get(cache_key)
        if cached and cached.identity == identity and now < cached.next_at:
            return cached
        try:
            creds = self._credentials(key[0], spec)
            resolved = self.registry_factory(spec.tracking_uri, creds).resolve(ref)
        except RegistryError as exc:
            failures = (cached.failures if cached and cached.identity == identity else 0) + 1
            delay = (min(self.settings.retry_base_seconds * 2 ** (failures - 1), spec.refresh_seconds)
                     if exc.transient else spec.refresh_seconds)
            keep = cached.resolved if cached and cached.identity == identity else None
            result = Resolution(identity, keep, Problem(exc.reason, str(exc)), now + delay, failures)
            metrics.REGISTRY_ERRORS.labels(reason=exc.reason).inc()
            log.warning("Resolving %s for %s/%s failed (%s), retrying in %.0fs", uri, *key,
                        result.problem.reason if result.problem else "", delay)
        else:
            result = Resolution(identity, resolved, None, now + spec.refresh_seconds)
        with self._lock:
            self._resolutions[cache_key] = result
        return result

    def forget(self, key: Key) -> None:
        with self._lock:
            for track in ("stable", "canary"):
                self._resolutions.pop((*key, track), None)

    # -- the reconcile ---------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> float | None:
        """Converge one ModelDeployment; return seconds until it wants another look (None: never)."""
        key = (namespace, name)
        obj = self.kube.get(render.API_VERSION, render.KIND, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            # Children carry owner references: the garbage collector removes them.
            self.forget(key)
            return None
        meta = obj["metadata"]
        owner = render.Owner(name=name, namespace=namespace, uid=meta["uid"])
        generation = int(meta.get("generation", 1))
        old_status: dict[str, Any] = obj.get("status") or {}
        now = utc_now()

        try:
            spec = parse_spec(obj.get("spec") or {}, self.settings)
        except InvalidSpec as exc:
            self.forget(key)
            conditions = merge_conditions(old_status.get("conditions"), invalid_spec_conditions(str(exc)),
                                          now, generation)
            self._write_status(obj, old_status, {"observedGeneration": generation,
                                                 "conditions": conditions})
            self._event_on_change(obj, old_status, conditions, now)
            return None

        resolution = self._resolve(key, spec, spec.model_uri, spec.model)
        previous_model = old_status.get("model") or {}
        target = resolution.resolved
        if target is None and previous_model.get("uri") == spec.model_uri and previous_model.get("version"):
            # Registry trouble after a restart: keep serving what the status says was resolved.
            target = ResolvedModel.from_status(previous_model)
        current = ResolvedModel.from_status(previous_model) if previous_model.get("version") else None

        candidate, candidate_uri, canary_problem, next_at = self._candidate(key, spec, resolution)

        stable_deployment = self.kube.get("apps/v1", "Deployment", namespace, render.deployment_name(owner))
        canary_deployment = self.kube.get("apps/v1", "Deployment", namespace,
                                          render.deployment_name(owner, "canary"))
        router, router_problem = self._router(spec)
        canary_rollout = Rollout.from_deployment(canary_deployment)
        wall = self.wall_clock()
        previous_canary: dict[str, Any] = old_status.get("canary") or {}
        verdict = self._analyse(spec, owner, previous_canary, candidate, wall)
        plan = canary_plan(spec, Observed(
            stable=current,
            target=target,
            candidate=candidate,
            previous=previous_canary,
            rejected=old_status.get("rejected") or {},
            canary_ready=(candidate is not None and canary_rollout.complete
                          and _template_uri(canary_deployment) == render.pinned_uri(candidate)),
            canary_failure=canary_rollout.failure,
            stable_version=_template_version(stable_deployment),
            stable_complete=Rollout.from_deployment(stable_deployment).complete,
            annotations=dict(meta.get("annotations") or {}),
            router_problem=router_problem,
        ), wall, verdict)

        def origin(model: ResolvedModel) -> str:
            """The URI `model` was resolved from (for its annotation and status.model.uri)."""
            if model is target:
                return spec.model_uri
            if model is current:
                return str(previous_model.get("uri") or spec.model_uri)
            return candidate_uri  # the candidate, or a canary version held from status

        deployment, canary_status = stable_deployment, plan.status
        if plan.stable is not None:
            deployment, canary_status = self._apply_children(owner, spec, plan, router, canary_deployment,
                                                             origin(plan.stable),
                                                             candidate_uri)

        rollout = Rollout.from_deployment(deployment)
        previous_version = previous_model.get("version")
        serving = plan.stable or (ResolvedModel.from_status(previous_model)
                                  if rollout.exists and previous_version else None)
        problem = resolution.problem
        conditions = compute_conditions(serving, problem, rollout, previous_version)
        conditions = _canary_conditions(conditions, spec.canary, canary_status, plan.rejected,
                                        canary_problem, router_problem if spec.canary else None)
        conditions = merge_conditions(old_status.get("conditions"), conditions, now, generation)
        new_status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": conditions,
            "replicas": rollout.replicas,
            "readyReplicas": rollout.ready,
            "updatedReplicas": rollout.updated,
            "selector": ",".join(f"{k}={v}" for k, v in render.selector_labels(owner).items()),
            "url": render.service_url(owner, self.settings),
            "canary": canary_status,
            "rejected": plan.rejected,
        }
        if plan.finished is not None:
            new_status["lastRollout"] = plan.finished
        if plan.stable is not None:
            new_status["model"] = plan.stable.to_status(origin(plan.stable))
            change = old_status.get("lastVersionChange")
            if previous_version and previous_version != plan.stable.version:
                change = {"from": previous_version, "to": plan.stable.version, "time": now}
            if change:
                new_status["lastVersionChange"] = change
            if rollout.complete and _template_version(deployment) == plan.stable.version:
                new_status["knownGoodVersion"] = plan.stable.version
        self._write_status(obj, old_status, new_status)
        self._record_events(obj, old_status, plan.stable, conditions, now, spec)
        for type_, reason, message in plan.events:
            if reason == "RolledBack":
                metrics.ROLLBACKS.inc()
            elif reason == "Promoted":
                metrics.PROMOTIONS.inc()
            self._event(obj, type_, reason, message, now)
        delays = [next_at - self.clock()]
        if plan.requeue is not None:
            delays.append(plan.requeue)
        return max(min(delays), 0.5)

    # -- canary helpers --------------------------------------------------------------------------
    def _candidate(self, key: Key, spec: DeploymentSpec, resolution: Resolution,
                   ) -> tuple[ResolvedModel | None, str, Problem | None, float]:
        """The canary candidate: the canary URI's version, else (progressive) spec.model.uri's version.

        Returns (candidate, the URI it comes from, a problem resolving the canary URI, when the next
        resolution is due). A progressive rollout gets no candidate while its resolution fails, so
        it pauses instead of acting on a stale answer.
        """
        canary = spec.canary
        if canary is None:
            return None, spec.model_uri, None, resolution.next_at
        if canary.model is not None and canary.model_uri:
            own = self._resolve(key, spec, canary.model_uri, canary.model, "canary")
            candidate = own.resolved if own.problem is None or not canary.progressive else None
            return candidate, canary.model_uri, own.problem, min(resolution.next_at, own.next_at)
        candidate = resolution.resolved if resolution.problem is None else None
        return candidate, spec.model_uri, None, resolution.next_at

    def _gateway_api_served(self) -> bool:
        served, checked_at = self._gateway_api
        if checked_at < 0 or self.clock() - checked_at > GATEWAY_API_RECHECK_SECONDS:
            try:
                served = self.kube.serves(render.GATEWAY_API_VERSION, "httproutes")
            except KubeError as exc:
                log.warning("Cannot tell whether the Gateway API is installed: %s", exc)
                served = False
            self._gateway_api = (served, self.clock())
        return served

    def _router(self, spec: DeploymentSpec) -> tuple[str, str | None]:
        """The traffic router in effect and, when the spec's wish cannot be met, why."""
        wanted = spec.traffic.router
        if wanted == "replicas":
            router = "replicas"
        elif wanted == "gatewayAPI" or (wanted == "auto" and spec.traffic.parent_refs):
            router = "gatewayAPI" if self._gateway_api_served() else "replicas"
            if router == "replicas" and wanted == "gatewayAPI":
                return router, ("spec.traffic.router is gatewayAPI but this cluster does not serve HTTPRoutes "
                                "(gateway.networking.k8s.io/v1): install the Gateway API CRDs or use "
                                "router: replicas; no canary traffic until then")
        else:
            router = "replicas"
        if spec.canary is not None and spec.canary.shadow and router != "gatewayAPI":
            return router, ("spec.canary.shadow mirrors requests through a Gateway API HTTPRoute, which is not "
                            "available here (needs the HTTPRoute CRD and spec.traffic.gatewayAPI.parentRefs)")
        return router, None

    def _apply_children(self, owner: render.Owner, spec: DeploymentSpec, plan: CanaryPlan, router: str,
                        canary_deployment: dict[str, Any] | None, stable_from: str, candidate_uri: str,
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Apply the plan: both tracks' Deployments, the Services, the traffic split.

        Returns the applied stable Deployment and status.canary completed with what the router
        really does (the effective weight of a replica split, the mirrored share of a shadow).
        """
        assert plan.stable is not None
        namespace, manager = owner.namespace, self.settings.field_manager
        stable_replicas, canary_replicas = spec.replicas, 0
        if plan.canary is not None and router == "replicas":
            stable_replicas, canary_replicas = split_replicas(spec.replicas, plan.weight or _start_weight(spec))
        elif plan.canary is not None:
            canary_replicas = canary_replicas_for_route(spec.replicas, _max_weight(spec))
        deployment = self.kube.apply(render.render_deployment(
            owner, spec, plan.stable, self.settings, replicas=stable_replicas, resolved_from=stable_from), manager)
        self.kube.apply(render.render_service(owner, self.settings), manager)
        if plan.canary is not None:
            self.kube.apply(render.render_deployment(owner, spec, plan.canary, self.settings, track="canary",
                                                     replicas=canary_replicas, resolved_from=candidate_uri), manager)
        elif canary_deployment is not None:
            self.kube.delete("apps/v1", "Deployment", namespace, render.deployment_name(owner, "canary"))
            log.info("Deleted canary Deployment %s/%s", namespace, render.deployment_name(owner, "canary"))
        self._apply_traffic(owner, spec, router, plan)

        canary_status = plan.status
        if canary_status is not None:
            if router == "replicas":
                # The Service spreads requests over ready pods: the split is the replica ratio.
                ready = canary_status["phase"] not in (STARTING, PAUSED) or canary_status.get("weight")
                canary_status["weight"] = effective_weight(stable_replicas, canary_replicas) if ready else 0
                canary_status["replicas"] = {"stable": stable_replicas, "canary": canary_replicas}
            canary_status["router"] = router
            canary_status["desiredWeight"] = plan.weight
            if spec.canary is not None and spec.canary.shadow:
                canary_status["mirrorPercent"] = canary_status["weight"]
                canary_status["weight"] = 0
        return deployment, canary_status

    def _apply_traffic(self, owner: render.Owner, spec: DeploymentSpec, router: str, plan: CanaryPlan) -> None:
        """The HTTPRoute and per-track Services (gatewayAPI), or their removal (replicas)."""
        namespace = owner.namespace
        if router == "gatewayAPI":
            manager = self.settings.field_manager
            self.kube.apply(render.render_service(owner, self.settings, "stable"), manager)
            shadow = spec.canary is not None and spec.canary.shadow
            if plan.canary is not None:
                self.kube.apply(render.render_service(owner, self.settings, "canary"), manager)
                route = render.render_http_route(owner, spec, plan.weight, shadow)
            else:
                route = render.render_http_route(owner, spec, None)
            self.kube.apply(route, manager)
            if plan.canary is None:
                self._delete_if_present("v1", "Service", namespace, render.track_service_name(owner, "canary"))
        elif self._gateway_api_served():
            existing = self.kube.get(render.GATEWAY_API_VERSION, "HTTPRoute", namespace, render.route_name(owner))
            if existing is not None and _owned_by(existing, owner):
                self.kube.delete(render.GATEWAY_API_VERSION, "HTTPRoute", namespace, render.route_name(owner))
                for track in ("stable", "canary"):
                    self._delete_if_present("v1", "Service", namespace, render.track_service_name(owner, track))
                log.info("Deleted HTTPRoute %s/%s (router is now replicas)", namespace, render.route_name(owner))

    def _delete_if_present(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        existing = self.kube.get(api_version, kind, namespace, name)
        if existing is not None:
            self.kube.delete(api_version, kind, namespace, name)
            log.info("Deleted %s %s/%s", kind, namespace, name)

    def _analyse(self, spec: DeploymentSpec, owner: render.Owner, previous: dict[str, Any],
                 candidate: ResolvedModel | None, wall: float) -> Verdict | None:
        """Run the current step's analysis when it is due (and the candidate has not moved)."""
        canary_spec = spec.canary
        if canary_spec is None or canary_spec.analysis is None or candidate is None:
            return None
        if previous.get("version") != candidate.version:
            return None
        window = analysis_window(canary_spec, previous, wall)
        if window is None:
            return None
        prometheus = Prometheus(canary_spec.analysis.prometheus_url, self.settings.prometheus_timeout_seconds)
        verdict = evaluate(canary_spec.analysis, {
            "namespace": owner.namespace, "name": owner.name, "model": candidate.name,
            "version": candidate.version}, window, prometheus.query)
        metrics.ANALYSES.labels(outcome=verdict.outcome).inc()
        log.info("Analysis of %s/%s version %s: %s (%s)", owner.namespace, owner.name, candidate.version,
                 verdict.outcome, verdict.message)
        return verdict

    # -- status and events -----------------------------------------------------------------------
    def _write_status(self, obj: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        if all(old.get(k) == v for k, v in new.items()):
            return
        meta = obj["metadata"]
        try:
            self.kube.patch_status(render.API_VERSION, render.KIND, meta["namespace"], meta["name"], new,
                                   self.settings.field_manager)
        except KubeError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report to
                raise

    def _record_events(self, obj: dict[str, Any], old: dict[str, Any], resolved: ResolvedModel | None,
                       conditions: list[dict[str, Any]], now: str, spec: DeploymentSpec) -> None:
        old_version = (old.get("model") or {}).get("version")
        if resolved is not None and old_version is None:
            self._event(obj, "Normal", "Resolved",
                        f"Resolved {spec.model_uri} to {resolved.name} version {resolved.version}", now)
        elif resolved is not None and old_version != resolved.version:
            metrics.VERSION_CHANGES.inc()
            self._event(obj, "Normal", "VersionChanged",
                        f"{spec.model_uri} moved from version {old_version} to {resolved.version}; "
                        "rolling out", now)
        self._event_on_change(obj, old, conditions, now)

    def _event_on_change(self, obj: dict[str, Any], old: dict[str, Any],
                         conditions: list[dict[str, Any]], now: str) -> None:
        """A Warning when resolution starts failing (or fails differently), Normal when it recovers."""
        before = _find(old.get("conditions"), MODEL_RESOLVED)
        after = _find(conditions, MODEL_RESOLVED)
        if after is None:
            return
        before_status, before_reason = (before or {}).get("status"), (before or {}).get("reason")
        if after["status"] == "False" and (before_status != "False" or before_reason != after["reason"]):
            self._event(obj, "Warning", after["reason"], after["message"], now)
        elif after["status"] == "True" and before_status == "False":
            self._event(obj, "Normal", "Recovered", after["message"], now)

    def _event(self, obj: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        meta = obj["metadata"]
        log.info("%s %s/%s: %s", reason, meta["namespace"], meta["name"], message)
        self.kube.create_event(obj, type_, reason, message, self.settings.field_manager, now)


def _find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)



def _template_uri(deployment: dict[str, Any] | None) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(render.ANNOTATION_MODEL_URI)


def _template_version(deployment: dict[str, Any] | None) -> str | None:
    uri = _template_uri(deployment)
    return uri.rsplit("/", 1)[-1] if uri else None


def _owned_by(obj: dict[str, Any], owner: render.Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj["metadata"].get("ownerReferences") or [])


def _start_weight(spec: DeploymentSpec) -> int:
    """The weight a canary starts with (replica ratio: its pods take traffic as soon as they are ready)."""
    canary = spec.canary
    if canary is None:
        return 0
    return canary.steps[0].weight if canary.steps else canary.weight


def _max_weight(spec: DeploymentSpec) -> int:
    canary = spec.canary
    if canary is None:
        return 0
    return max([s.weight for s in canary.steps] or [canary.weight])


def _canary_conditions(conditions: list[dict[str, Any]], canary_spec: CanarySpec | None,
                       canary_status: dict[str, Any] | None,
                       rejected: dict[str, Any] | None, canary_problem: Problem | None,
                       router_problem: str | None) -> list[dict[str, Any]]:
    """Progressing while a progressive rollout runs; Degraded after a rollback or when the canary can't run."""
    by_type = {c["type"]: c for c in conditions}
    if canary_status is not None and canary_spec is not None and canary_spec.progressive:
        by_type[PROGRESSING] = condition(PROGRESSING, True, "CanaryRollout",
                                         f"canary version {canary_status['version']}: {canary_status['message']}")
    degraded = by_type.get(DEGRADED)
    if degraded is not None and degraded["status"] != "True":
        if router_problem:
            by_type[DEGRADED] = condition(DEGRADED, True, "TrafficRouterUnavailable", router_problem)
        elif canary_problem is not None:
            by_type[DEGRADED] = condition(DEGRADED, True, canary_problem.reason,
                                          f"spec.canary.model.uri: {canary_problem.message}")
        elif rejected:
            by_type[DEGRADED] = condition(DEGRADED, True, "RolledBack",
                                          f"version {rejected.get('version')} was rolled back "
                                          f"({rejected.get('reason')}); stable keeps serving until the "
                                          "candidate moves to another version")
    return [by_type[c["type"]] for c in conditions]
