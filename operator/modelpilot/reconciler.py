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
from .config import Settings
from .kube import Kube, KubeError
from .registry import Credentials, RegistryClient, RegistryError, ResolvedModel
from .spec import DeploymentSpec, InvalidSpec, parse_spec
from .status import (
    MODEL_RESOLVED,
    Problem,
    Rollout,
    compute_conditions,
    invalid_spec_conditions,
    merge_conditions,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RegistryFactory = Callable[[str, Credentials | None], RegistryClient]


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
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.registry_factory = registry_factory or (
            lambda uri, creds: RegistryClient(uri, creds, timeout=settings.registry_timeout_seconds))
        self._resolutions: dict[Key, Resolution] = {}
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

    def _resolve(self, key: Key, spec: DeploymentSpec) -> Resolution:
        """The cached resolution while it is fresh, else ask the registry (at most once per interval)."""
        identity = (spec.model_uri, spec.tracking_uri, spec.credentials_secret)
        now = self.clock()
        with self._lock:
            cached = self._resolutions.get(key)
        if cached and cached.identity == identity and now < cached.next_at:
            return cached
        try:
            creds = self._credentials(key[0], spec)
            resolved = self.registry_factory(spec.tracking_uri, creds).resolve(spec.model)
        except RegistryError as exc:
            failures = (cached.failures if cached and cached.identity == identity else 0) + 1
            delay = (min(self.settings.retry_base_seconds * 2 ** (failures - 1), spec.refresh_seconds)
                     if exc.transient else spec.refresh_seconds)
            keep = cached.resolved if cached and cached.identity == identity else None
            result = Resolution(identity, keep, Problem(exc.reason, str(exc)), now + delay, failures)
            metrics.REGISTRY_ERRORS.labels(reason=exc.reason).inc()
            log.warning("Resolving %s for %s/%s failed (%s), retrying in %.0fs", spec.model_uri, *key,
                        result.problem.reason if result.problem else "", delay)
        else:
            result = Resolution(identity, resolved, None, now + spec.refresh_seconds)
        with self._lock:
            self._resolutions[key] = result
        return result

    def forget(self, key: Key) -> None:
        with self._lock:
            self._resolutions.pop(key, None)

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

        resolution = self._resolve(key, spec)
        resolved = resolution.resolved
        previous_model = old_status.get("model") or {}
        if resolved is None and previous_model.get("uri") == spec.model_uri and previous_model.get("version"):
            # Registry trouble after a restart: keep serving what the status says was resolved.
            resolved = ResolvedModel.from_status(previous_model)

        deployment: dict[str, Any] | None
        if resolved is not None:
            deployment = self.kube.apply(render.render_deployment(owner, spec, resolved, self.settings),
                                         self.settings.field_manager)
            self.kube.apply(render.render_service(owner, self.settings), self.settings.field_manager)
        else:
            deployment = self.kube.get("apps/v1", "Deployment", namespace, render.deployment_name(owner))

        rollout = Rollout.from_deployment(deployment)
        previous_version = previous_model.get("version")
        # What actually serves: the resolution, or (for a new URI that does not resolve) the old version.
        serving = resolved or (ResolvedModel.from_status(previous_model)
                               if rollout.exists and previous_version else None)
        conditions = merge_conditions(
            old_status.get("conditions"),
            compute_conditions(serving, resolution.problem, rollout, previous_version),
            now, generation)
        new_status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": conditions,
            "replicas": rollout.replicas,
            "readyReplicas": rollout.ready,
            "updatedReplicas": rollout.updated,
            "selector": ",".join(f"{k}={v}" for k, v in render.selector_labels(owner).items()),
            "url": render.service_url(owner, self.settings),
        }
        if resolved is not None:
            new_status["model"] = resolved.to_status(spec.model_uri)
            change = old_status.get("lastVersionChange")
            if previous_version and previous_version != resolved.version:
                change = {"from": previous_version, "to": resolved.version, "time": now}
            if change:
                new_status["lastVersionChange"] = change
        self._write_status(obj, old_status, new_status)
        self._record_events(obj, old_status, resolved, conditions, now, spec)
        return max(resolution.next_at - self.clock(), 0.5)

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

