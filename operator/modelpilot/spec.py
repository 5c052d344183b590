"""The ModelDeployment spec as typed values with defaults applied.

Why: the CRD schema rejects most bad input at `kubectl apply` time, but an operator must not trust it
(an older CRD, a `kubectl replace --validate=false`, a field the schema cannot express). Everything the
reconcile uses goes through `parse_spec`, which either returns a complete `DeploymentSpec` or raises
`InvalidSpec` naming the field, so the rest of the code never sees a missing key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .durations import parse_duration
from .uri import InvalidModelURI, ModelRef, parse_model_uri
from .urls import BaseURL, InvalidURL, parse_base_url

VARIANTS = ("cpu", "gpu")
ROUTERS = ("auto", "gatewayAPI", "replicas")
#: Shortest refresh interval accepted: polling a registry faster than this only adds load.
MIN_REFRESH_SECONDS = 1.0
#: A Kubernetes resource quantity (the API server's own grammar, as the CRD's pattern).
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
QUANTITY = re.compile(QUANTITY_PATTERN)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidSpec(ValueError):
    """The spec cannot be acted upon; the message names the field."""


BATCHING_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 1024
    max_delay_ms: float = 5.0
    #: auto: merge requests only for models known to predict row by row; always; off.
    mode: str = "auto"


@dataclass(frozen=True)
class Runtime:
    variant: str = "cpu"
    workers: int = 1
    batching: Batching = field(default_factory=Batching)
    #: Extra environment for the scoring server, as Kubernetes EnvVar objects.
    env: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Step:
    weight: int
    #: How long the step holds before its analysis; None: until a manual promote.
    pause_seconds: float | None


@dataclass(frozen=True)
class Analysis:
    prometheus: BaseURL
    max_error_rate: float | None
    max_p99_latency_ms: float | None
    #: Fewer canary requests than this in the window is "not enough data" (the rollout waits).
    min_requests: int
    #: PromQL range of each query; None: the step's pause.
    window_seconds: float | None
    #: PromQL templates overriding the defaults, keyed errorRate / p99LatencyMs / requests.
    queries: dict[str, str]


@dataclass(frozen=True)
class CanarySpec:
    #: The canary's own URI (e.g. @challenger); None: new versions of spec.model.uri are the canary.
    model_uri: str | None
    model: ModelRef | None
    #: Percent of traffic for a manual canary.
    weight: int
    steps: tuple[Step, ...]
    analysis: Analysis | None
    #: Mirror the weight's share of requests to the canary instead of splitting traffic.
    shadow: bool

    @property
    def progressive(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class TrafficSpec:
    router: str = "auto"
    parent_refs: tuple[dict[str, Any], ...] = ()
    hostnames: tuple[str, ...] = ()


AUTH_MODES = ("none", "kubernetes", "apiKey")


@dataclass(frozen=True)
class AuthSpec:
    """Who may call the model (the scoring server enforces it; probes and /metrics stay open)."""

    mode: str = "none"
    #: kubernetes: the audience callers' tokens must be minted for.
    audience: str = "modelpilot"
    #: apiKey: the Secret (in the ModelDeployment's namespace) whose values are the valid keys.
    api_key_secret: str | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    model_uri: str
    model: ModelRef
    #: The registry, parsed (requests are built from its parts, never by string concatenation).
    tracking: BaseURL
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
    canary: CanarySpec | None = None
    traffic: TrafficSpec = field(default_factory=TrafficSpec)
    auth: AuthSpec = field(default_factory=AuthSpec)
    #: NetworkPolicy peers (namespaceSelector / podSelector) allowed to reach the pods; () = no policy.
    allow_from: tuple[dict[str, Any], ...] = ()
    #: The Deployments' rollingUpdate (maxSurge, maxUnavailable): an int or "N%".
    max_surge: int | str = "25%"
    max_unavailable: int | str = 0

    @property
    def tracking_uri(self) -> str:
        return str(self.tracking)


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

    tracking, secret, required = _registry(_dict(spec.get("registry"), "spec.registry"), settings)

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
    delay = _number(batching_raw.get("maxDelayMs", Batching.max_delay_ms), "spec.runtime.batching.maxDelayMs")
    env = runtime_raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(e, dict) and e.get("name") for e in env):
        raise InvalidSpec("spec.runtime.env must be a list of {name, value} objects")
    for i, entry in enumerate(env):
        if "value" in entry and "valueFrom" in entry:
            raise InvalidSpec(f"spec.runtime.env[{i}] ({entry['name']}) sets both value and valueFrom")
    runtime = Runtime(
        variant=variant,
        workers=_int(runtime_raw.get("workers"), "spec.runtime.workers", 1, minimum=1),
        batching=Batching(
            max_batch_size=_int(batching_raw.get("maxBatchSize"), "spec.runtime.batching.maxBatchSize",
                                Batching.max_batch_size, minimum=1),
            max_delay_ms=Batching.max_delay_ms if delay is None else delay,
            mode=_choice(batching_raw.get("mode"), "spec.runtime.batching.mode", BATCHING_MODES, "auto"),
        ),
        env=tuple(env),
    )

    resources = dict(_dict(spec.get("resources"), "spec.resources"))
    gpus = _int(resources.pop("gpu", None), "spec.resources.gpu", 1 if variant == "gpu" else 0)
    if gpus and variant != "gpu":
        raise InvalidSpec("spec.resources.gpu is set but spec.runtime.variant is not gpu")
    k8s_resources = {k: dict(_dict(v, f"spec.resources.{k}")) for k, v in resources.items()
                     if k in ("requests", "limits") and v}
    for kind, amounts in k8s_resources.items():
        for resource, amount in amounts.items():
            if isinstance(amount, bool) or not QUANTITY.match(str(amount)):
                raise InvalidSpec(f"spec.resources.{kind}.{resource} must be a quantity such as 500m, 2 or 1Gi, "
                                  f"got {amount!r}")

    node_selector = _dict(spec.get("nodeSelector"), "spec.nodeSelector")
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise InvalidSpec("spec.tolerations must be a list")

    traffic = _traffic(spec.get("traffic"))
    canary = _canary(spec.get("canary"), traffic, settings)

    return DeploymentSpec(
        model_uri=uri,
        model=ref,
        tracking=tracking,
        credentials_secret=secret,
        credentials_required=required,
        refresh_seconds=refresh,
        replicas=_int(spec.get("replicas"), "spec.replicas", 1),
        runtime=runtime,
        resources=k8s_resources,
        gpus=gpus,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        tolerations=tuple(tolerations),
        canary=canary,
        traffic=traffic,
        auth=_auth(spec.get("auth")),
        allow_from=_allow_from(spec.get("networkPolicy")),
        **_rollout(spec.get("rollout")),
    )


def _pods_or_percent(value: Any, path: str, default: int | str) -> int | str:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return value
    raise InvalidSpec(f"{path} must be a number of pods or a percentage such as 25%, got {value!r}")


def _rollout(raw: Any) -> dict[str, int | str]:
    rollout = _dict(raw, "spec.rollout")
    surge = _pods_or_percent(rollout.get("maxSurge"), "spec.rollout.maxSurge", "25%")
    unavailable = _pods_or_percent(rollout.get("maxUnavailable"), "spec.rollout.maxUnavailable", 0)
    if int(str(surge).rstrip("%")) == 0 and int(str(unavailable).rstrip("%")) == 0:
        raise InvalidSpec("spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0: "
                          "the rollout could never replace a pod")
    return {"max_surge": surge, "max_unavailable": unavailable}


def _auth(raw: Any) -> AuthSpec:
    auth = _dict(raw, "spec.auth")
    mode = _choice(auth.get("mode"), "spec.auth.mode", AUTH_MODES, "none")
    audience = auth.get("audience") or AuthSpec.audience
    if not isinstance(audience, str):
        raise InvalidSpec("spec.auth.audience must be a string")
    ref = _dict(auth.get("apiKeySecretRef"), "spec.auth.apiKeySecretRef")
    secret = ref.get("name")
    if secret is not None and (not isinstance(secret, str) or not DNS_SUBDOMAIN.match(secret)):
        raise InvalidSpec(f"spec.auth.apiKeySecretRef.name must be a Secret name, got {secret!r}")
    if mode == "apiKey" and not secret:
        raise InvalidSpec("spec.auth.mode apiKey needs spec.auth.apiKeySecretRef.name: the Secret whose values "
                          "are the keys callers may send")
    return AuthSpec(mode=mode, audience=audience, api_key_secret=secret if mode == "apiKey" else None)


_PEER_KEYS = {"namespaceSelector", "podSelector"}


def _allow_from(raw: Any) -> tuple[dict[str, Any], ...]:
    policy = _dict(raw, "spec.networkPolicy")
    peers = policy.get("allowFrom")
    if peers is None:
        return ()
    if not isinstance(peers, list) or not peers:
        raise InvalidSpec("spec.networkPolicy.allowFrom must be a non-empty list of {namespaceSelector, "
                          "podSelector} peers (leave it out for no policy)")
    out = []
    for i, peer in enumerate(peers):
        if not isinstance(peer, dict) or not peer or set(peer) - _PEER_KEYS:
            raise InvalidSpec(f"spec.networkPolicy.allowFrom[{i}] must set namespaceSelector and/or podSelector")
        for key, selector in peer.items():
            if not isinstance(selector, dict) or set(selector) - {"matchLabels", "matchExpressions"}:
                raise InvalidSpec(f"spec.networkPolicy.allowFrom[{i}].{key} must be a label selector "
                                  "(matchLabels, matchExpressions)")
        out.append({k: peer[k] for k in sorted(peer)})
    return tuple(out)


def _choice(value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
    if value in (None, ""):
        return default
    if value not in choices:
        raise InvalidSpec(f"{path} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _number(value: Any, path: str, minimum: float = 0.0) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise InvalidSpec(f"{path} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _weight(value: Any, path: str) -> int:
    weight = _int(value, path, 0)
    if weight > 100:
        raise InvalidSpec(f"{path} must be between 0 and 100, got {weight}")
    return weight


def _traffic(raw: Any) -> TrafficSpec:
    traffic = _dict(raw, "spec.traffic")
    router = traffic.get("router") or "auto"
    if router not in ROUTERS:
        raise InvalidSpec(f"spec.traffic.router must be one of {', '.join(ROUTERS)}, got {router!r}")
    gateway = _dict(traffic.get("gatewayAPI"), "spec.traffic.gatewayAPI")
    parents = gateway.get("parentRefs") or []
    if not isinstance(parents, list) or not all(isinstance(p, dict) and p.get("name") for p in parents):
        raise InvalidSpec("spec.traffic.gatewayAPI.parentRefs must be a list of {name, namespace, ...} objects")
    hostnames = gateway.get("hostnames") or []
    if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
        raise InvalidSpec("spec.traffic.gatewayAPI.hostnames must be a list of strings")
    if router == "gatewayAPI" and not parents:
        raise InvalidSpec("spec.traffic.router is gatewayAPI but spec.traffic.gatewayAPI.parentRefs is empty: "
                          "name the Gateway the HTTPRoute attaches to")
    return TrafficSpec(router=router, parent_refs=tuple(parents), hostnames=tuple(hostnames))


def _canary(raw: Any, traffic: TrafficSpec, settings: Settings) -> CanarySpec | None:
    if raw is None:
        return None
    canary = _dict(raw, "spec.canary")
    model = _dict(canary.get("model"), "spec.canary.model")
    uri = model.get("uri") or None
    ref = None
    if uri is not None:
        try:
            ref = parse_model_uri(uri)
        except InvalidModelURI as exc:
            raise InvalidSpec(f"spec.canary.model.uri: {exc}") from exc

    raw_steps = canary.get("steps") or []
    if not isinstance(raw_steps, list):
        raise InvalidSpec("spec.canary.steps must be a list of {weight, pause}")
    steps = []
    for i, raw_step in enumerate(raw_steps):
        step = _dict(raw_step, f"spec.canary.steps[{i}]")
        pause = step.get("pause")
        try:
            seconds = None if pause in (None, "") else parse_duration(pause)
        except ValueError as exc:
            raise InvalidSpec(f"spec.canary.steps[{i}].pause: {exc}") from exc
        steps.append(Step(weight=_weight(step.get("weight"), f"spec.canary.steps[{i}].weight"),
                          pause_seconds=seconds))
    if uri is None and not steps:
        raise InvalidSpec("spec.canary needs model.uri (a manual canary at spec.canary.weight) or steps "
                          "(a progressive rollout of each new version)")

    analysis = None
    raw_analysis = canary.get("analysis")
    if raw_analysis is not None:
        a = _dict(raw_analysis, "spec.canary.analysis")
        if not steps:
            raise InvalidSpec("spec.canary.analysis runs between steps: set spec.canary.steps too")
        url = a.get("prometheusUrl") or settings.default_prometheus_url
        if not url:
            raise InvalidSpec("spec.canary.analysis.prometheusUrl is not set and the operator has no default "
                              "(MODELPILOT_DEFAULT_PROMETHEUS_URL)")
        try:
            prometheus = parse_base_url(url, "spec.canary.analysis.prometheusUrl")
        except InvalidURL as exc:
            raise InvalidSpec(str(exc)) from None
        max_error = _number(a.get("maxErrorRate"), "spec.canary.analysis.maxErrorRate")
        if max_error is not None and max_error > 1:
            raise InvalidSpec(f"spec.canary.analysis.maxErrorRate is a share between 0 and 1, got {max_error:g}")
        max_p99 = _number(a.get("maxP99LatencyMs"), "spec.canary.analysis.maxP99LatencyMs")
        if max_error is None and max_p99 is None:
            raise InvalidSpec("spec.canary.analysis needs maxErrorRate or maxP99LatencyMs (or both)")
        window = a.get("window")
        try:
            window_seconds = None if window in (None, "") else parse_duration(window)
        except ValueError as exc:
            raise InvalidSpec(f"spec.canary.analysis.window: {exc}") from exc
        queries = _dict(a.get("queries"), "spec.canary.analysis.queries")
        unknown = set(queries) - {"errorRate", "p99LatencyMs", "requests"}
        if unknown or not all(isinstance(q, str) and q.strip() for q in queries.values()):
            extra = f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""
            raise InvalidSpec("spec.canary.analysis.queries takes non-empty PromQL strings under errorRate, "
                              f"p99LatencyMs and requests{extra}")
        analysis = Analysis(
            prometheus=prometheus,
            max_error_rate=max_error,
            max_p99_latency_ms=max_p99,
            min_requests=_int(a.get("minRequests"), "spec.canary.analysis.minRequests", 10),
            window_seconds=window_seconds,
            queries={str(k): str(v) for k, v in queries.items()},
        )

    shadow = bool(canary.get("shadow", False))
    if shadow and traffic.router == "replicas":
        raise InvalidSpec("spec.canary.shadow mirrors requests with the Gateway API; it cannot work with "
                          "spec.traffic.router: replicas")
    return CanarySpec(
        model_uri=uri,
        model=ref,
        weight=_weight(canary.get("weight"), "spec.canary.weight"),
        steps=tuple(steps),
        analysis=analysis,
        shadow=shadow,
    )


def _registry(registry: dict[str, Any], settings: Settings) -> tuple[BaseURL, str | None, bool]:
    """The registry to ask and the Secret to ask it with: (tracking URL, Secret name, Secret required).

    A credential only ever goes to the registry it was configured for: the operator's default Secret
    goes with the operator's default tracking URI alone; a registry the spec chose gets only the Secret
    the spec names (in its own namespace), and must be on the platform's allowlist when there is one.
    """
    default = None
    if settings.default_tracking_uri:
        try:
            default = parse_base_url(settings.default_tracking_uri, "MODELPILOT_DEFAULT_TRACKING_URI")
        except InvalidURL as exc:
            raise InvalidSpec(f"the operator's default tracking URI is invalid: {exc}") from None
    secret_ref = _dict(registry.get("credentialsSecretRef"), "spec.registry.credentialsSecretRef")
    named = secret_ref.get("name") or None
    if named is not None and not isinstance(named, str):
        raise InvalidSpec("spec.registry.credentialsSecretRef.name must be a string")
    raw = registry.get("trackingUri")
    if raw in (None, ""):
        if default is None:
            raise InvalidSpec("spec.registry.trackingUri is not set and the operator has no default tracking URI "
                              "(MODELPILOT_DEFAULT_TRACKING_URI)")
        return default, named or settings.default_credentials_secret or None, named is not None
    try:
        tracking = parse_base_url(raw, "spec.registry.trackingUri")
    except InvalidURL as exc:
        raise InvalidSpec(str(exc)) from None
    if tracking == default:
        return tracking, named or settings.default_credentials_secret or None, named is not None
    if settings.allowed_registry_urls and not any(_admits(entry, tracking) for entry in settings.allowed_registry_urls):
        raise InvalidSpec(f"spec.registry.trackingUri {tracking.origin} is not among the registries this platform "
                          "allows (MODELPILOT_ALLOWED_REGISTRY_URLS); ask the platform team, or leave it unset "
                          "to use the default registry")
    return tracking, named, named is not None


def _admits(entry: str, url: BaseURL) -> bool:
    try:
        allowed = parse_base_url(entry, "MODELPILOT_ALLOWED_REGISTRY_URLS")
    except InvalidURL:
        return False
    same_origin = (allowed.scheme, allowed.host.lower(), allowed.port) == (url.scheme, url.host.lower(), url.port)
    return same_origin and (url.path == allowed.path or url.path.startswith(allowed.path + "/"))
