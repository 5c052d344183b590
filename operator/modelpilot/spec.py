"""The ModelDeployment spec as typed values with defaults applied.

Why: the CRD schema rejects most bad input at `kubectl apply` time, but an operator must not trust it
(an older CRD, a `kubectl replace --validate=false`, a field the schema cannot express). Everything the
reconcile uses goes through `parse_spec`, which either returns a complete `DeploymentSpec` or raises
`InvalidSpec` naming the field, so the rest of the code never sees a missing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .durations import parse_duration
from .uri import InvalidModelURI, ModelRef, parse_model_uri

VARIANTS = ("cpu", "gpu")
#: Shortest refresh interval accepted: polling a registry faster than this only adds load.
MIN_REFRESH_SECONDS = 1.0


class InvalidSpec(ValueError):
    """The spec cannot be acted upon; the message names the field."""


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 1024
    max_delay_ms: float = 5.0


@dataclass(frozen=True)
class Runtime:
    variant: str = "cpu"
    workers: int = 1
    batching: Batching = field(default_factory=Batching)
    #: Extra environment for the scoring server, as Kubernetes EnvVar objects.
    env: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class DeploymentSpec:
    model_uri: str
    model: ModelRef
    tracking_uri: str
    credentials_secret: str | None
    #: True when the Secret was named in the spec (missing → error), False for the operator default
    #: (missing → no credentials).
    credentials_required: bool
    refresh_seconds: float
    replicas: int
    runtime: Runtime
    resources: dict[str, Any]
    gpus: int
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]


def _dict(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(f"{path} must be an object")
    return value


def _int(value: Any, path: str, default: int, minimum: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{path} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidSpec(f"{path} must be at least {minimum}, got {value}")
    return value


def parse_spec(spec: dict[str, Any], settings: Settings) -> DeploymentSpec:
    spec = _dict(spec, "spec")
    model = _dict(spec.get("model"), "spec.model")
    uri = model.get("uri")
    if not uri:
        raise InvalidSpec("spec.model.uri is required, e.g. models:/fraud-detector@champion")
    try:
        ref = parse_model_uri(uri)
    except InvalidModelURI as exc:
        raise InvalidSpec(f"spec.model.uri: {exc}") from exc

    registry = _dict(spec.get("registry"), "spec.registry")
    tracking_uri = registry.get("trackingUri") or settings.default_tracking_uri
    if not tracking_uri:
        raise InvalidSpec(
            "spec.registry.trackingUri is not set and the operator has no default tracking URI "
            "(MODELPILOT_DEFAULT_TRACKING_URI)"
        )
    secret_ref = _dict(registry.get("credentialsSecretRef"), "spec.registry.credentialsSecretRef")
    secret = secret_ref.get("name") or None
    required = secret is not None
    if secret is None:
        secret = settings.default_credentials_secret or None

    raw_refresh = spec.get("refreshInterval")
    try:
        refresh = (settings.default_refresh_seconds if raw_refresh in (None, "")
                   else parse_duration(raw_refresh))
    except ValueError as exc:
        raise InvalidSpec(f"spec.refreshInterval: {exc}") from exc
    refresh = max(refresh, MIN_REFRESH_SECONDS)

    runtime_raw = _dict(spec.get("runtime"), "spec.runtime")
    variant = runtime_raw.get("variant") or "cpu"
    if variant not in VARIANTS:
        raise InvalidSpec(f"spec.runtime.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    batching_raw = _dict(runtime_raw.get("batching"), "spec.runtime.batching")
    delay = batching_raw.get("maxDelayMs", Batching.max_delay_ms)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise InvalidSpec(f"spec.runtime.batching.maxDelayMs must be a number >= 0, got {delay!r}")
    env = runtime_raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(e, dict) and e.get("name") for e in env):
        raise InvalidSpec("spec.runtime.env must be a list of {name, value} objects")
    runtime = Runtime(
        variant=variant,
        workers=_int(runtime_raw.get("workers"), "spec.runtime.workers", 1, minimum=1),
        batching=Batching(
            max_batch_size=_int(batching_raw.get("maxBatchSize"), "spec.runtime.batching.maxBatchSize",
                                Batching.max_batch_size, minimum=1),
            max_delay_ms=float(delay),
        ),
        env=tuple(env),
    )

    resources = dict(_dict(spec.get("resources"), "spec.resources"))
    gpus = _int(resources.pop("gpu", None), "spec.resources.gpu", 1 if variant == "gpu" else 0)
    if gpus and variant != "gpu":
        raise InvalidSpec("spec.resources.gpu is set but spec.runtime.variant is not gpu")
    k8s_resources = {k: dict(_dict(v, f"spec.resources.{k}")) for k, v in resources.items()
                     if k in ("requests", "limits") and v}

    node_selector = _dict(spec.get("nodeSelector"), "spec.nodeSelector")
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise InvalidSpec("spec.tolerations must be a list")

    return DeploymentSpec(
        model_uri=uri,
        model=ref,
        tracking_uri=tracking_uri,
        credentials_secret=secret,
        credentials_required=required,
        refresh_seconds=refresh,
        replicas=_int(spec.get("replicas"), "spec.replicas", 1),
        runtime=runtime,
        resources=k8s_resources,
        gpus=gpus,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        tolerations=tuple(tolerations),
    )
