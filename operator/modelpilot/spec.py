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

from .autoscaling import Autoscaling, parse_autoscaling
from .config import Settings
from .driftspec import DriftSpec, parse_drift
from .fields import InvalidSpec as InvalidSpec  # (re-exported: parse_spec's callers catch it from here)
from .fields import choice, duration, integer, obj, prometheus_url
from .podtemplate import DNS_SUBDOMAIN, PodTemplate, parse_pod_template
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
    #: PromQL templates overriding the defaults, keyed errorRate / p99LatencyMs / requests / predictionDrift.
    queries: dict[str, str]
    #: Highest PSI between the canary's and stable's predictions (both counted into stable's profile's bins).
    max_prediction_drift: float | None = None


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
    #: Where the canary's pods come from: "borrow" (from stable), "additive" (on top); None: the router's default.
    capacity: str | None = None

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
    #: The tenant's pod template (merged under the operator's fields).
    pod: PodTemplate = field(default_factory=PodTemplate)
    #: The PodDisruptionBudget: ("minAvailable" | "maxUnavailable", amount); None: no budget.
    disruption_budget: tuple[str, int | str] | None = None
    #: An HPA owns the stable Deployment's replicas (spec.replicas is then not used).
    autoscaling: Autoscaling | None = None
    #: spec.monitoring.maxModelAge in seconds: a served version registered longer ago is Stale.
    max_model_age_seconds: float | None = None
    #: spec.monitoring.latency: the thresholds the served version is checked against (LatencyWithinThreshold).
    latency: Analysis | None = None
    #: spec.monitoring.drift: the PSI thresholds the served version's drift is judged by (Drifting).
    drift: DriftSpec | None = None
    #: spec.logging: sampled requests and responses sent as CloudEvents by the scoring server.
    payload_log: PayloadLog | None = None

    @property
    def most_replicas(self) -> int:
        """The most stable pods this spec can run (spread decisions)."""
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas

    @property
    def tracking_uri(self) -> str:
        return str(self.tracking)


def parse_spec(spec: dict[str, Any], settings: Settings) -> DeploymentSpec:
    spec = obj(spec, "spec")
    model = obj(spec.get("model"), "spec.model")
    uri = model.get("uri")
    if not uri:
        raise InvalidSpec("spec.model.uri is required, e.g. models:/fraud-detector@champion")
    try:
        ref = parse_model_uri(uri)
    except InvalidModelURI as exc:
        raise InvalidSpec(f"spec.model.uri: {exc}") from exc

    tracking, secret, required = _registry(obj(spec.get("registry"), "spec.registry"), settings)

    refresh = duration(spec.get("refreshInterval"), "spec.refreshInterval")
    refresh = max(settings.default_refresh_seconds if refresh is None else refresh, MIN_REFRESH_SECONDS)

    runtime_raw = obj(spec.get("runtime"), "spec.runtime")
    variant = runtime_raw.get("variant") or "cpu"
    if variant not in VARIANTS:
        raise InvalidSpec(f"spec.runtime.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    batching_raw = obj(runtime_raw.get("batching"), "spec.runtime.batching")
    delay = _number(batching_raw.get("maxDelayMs", Batching.max_delay_ms), "spec.runtime.batching.maxDelayMs")
    env = runtime_raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(e, dict) and e.get("name") for e in env):
        raise InvalidSpec("spec.runtime.env must be a list of {name, value} objects")
    for i, entry in enumerate(env):
        if "value" in entry and "valueFrom" in entry:
            raise InvalidSpec(f"spec.runtime.env[{i}] ({entry['name']}) sets both value and valueFrom")
    runtime = Runtime(
        variant=variant,
        workers=integer(runtime_raw.get("workers"), "spec.runtime.workers", 1, minimum=1),
        batching=Batching(
            max_batch_size=integer(batching_raw.get("maxBatchSize"), "spec.runtime.batching.maxBatchSize",
                                Batching.max_batch_size, minimum=1),
            max_delay_ms=Batching.max_delay_ms if delay is None else delay,
            mode=choice(batching_raw.get("mode"), "spec.runtime.batching.mode", BATCHING_MODES, "auto"),
        ),
        env=tuple(env),
    )

    resources = dict(obj(spec.get("resources"), "spec.resources"))
    gpus = integer(resources.pop("gpu", None), "spec.resources.gpu", 1 if variant == "gpu" else 0)
    if gpus and variant != "gpu":
        raise InvalidSpec("spec.resources.gpu is set but spec.runtime.variant is not gpu")
    k8s_resources = {k: dict(obj(v, f"spec.resources.{k}")) for k, v in resources.items()
                     if k in ("requests", "limits") and v}
    for kind, amounts in k8s_resources.items():
        for resource, amount in amounts.items():
            if isinstance(amount, bool) or not QUANTITY.fullmatch(str(amount)):
                raise InvalidSpec(f"spec.resources.{kind}.{resource} must be a quantity such as 500m, 2 or 1Gi, "
                                  f"got {amount!r}")

    node_selector = obj(spec.get("nodeSelector"), "spec.nodeSelector")
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise InvalidSpec("spec.tolerations must be a list")

    traffic = _traffic(spec.get("traffic"))
    canary = _canary(spec.get("canary"), traffic, settings)
    if (canary is not None and canary.model is not None and canary.model.name != ref.name
            and canary.analysis is not None and canary.analysis.max_prediction_drift is not None):
        raise InvalidSpec("spec.canary.analysis.maxPredictionDrift compares versions of one registered model: "
                          f"spec.canary.model.uri names {canary.model.name!r}, spec.model.uri {ref.name!r}")
    auth = _auth(spec.get("auth"))
    pod = parse_pod_template(spec.get("podTemplate"), runtime_raw, auth.mode, settings)
    replicas = integer(spec.get("replicas"), "spec.replicas", 1)
    autoscaling = parse_autoscaling(spec.get("autoscaling"), settings)

    return DeploymentSpec(
        model_uri=uri,
        model=ref,
        tracking=tracking,
        credentials_secret=secret,
        credentials_required=required,
        refresh_seconds=refresh,
        replicas=replicas,
        runtime=runtime,
        resources=k8s_resources,
        gpus=gpus,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        tolerations=tuple(tolerations),
        canary=canary,
        traffic=traffic,
        auth=auth,
        allow_from=_allow_from(spec.get("networkPolicy")),
        **_rollout(spec.get("rollout")),
        pod=pod,
        disruption_budget=_disruption_budget(spec.get("disruptionBudget"),
                                             autoscaling.min_replicas if autoscaling else replicas),
        autoscaling=autoscaling,
        max_model_age_seconds=_max_model_age(spec.get("monitoring")),
        latency=_latency(obj(spec.get("monitoring"), "spec.monitoring").get("latency"), settings),
        drift=parse_drift(obj(spec.get("monitoring"), "spec.monitoring").get("drift"), settings),
        payload_log=_payload_log(spec.get("logging")),
    )


@dataclass(frozen=True)
class PayloadLog:
    """spec.logging: the sink sampled requests and responses are POSTed to, and the share sampled."""

    url: str
    sample_rate: float


def _payload_log(raw: Any) -> PayloadLog | None:
    logging_ = obj(raw, "spec.logging")
    if not logging_:
        return None
    url = obj(logging_.get("sink"), "spec.logging.sink").get("url")
    if not url:
        raise InvalidSpec("spec.logging.sink.url must be set: the http(s) endpoint events are POSTed to")
    try:
        sink = parse_base_url(url, "spec.logging.sink.url")
    except InvalidURL as exc:
        raise InvalidSpec(str(exc)) from None
    rate = logging_.get("sampleRate", 1)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise InvalidSpec(f"spec.logging.sampleRate must be a number from 0 to 1, got {rate!r}")
    return PayloadLog(sink.href, float(rate))


#: spec.monitoring.latency: the window by default, and fewer requests than this in it is "not enough data".
DEFAULT_LATENCY_WINDOW_SECONDS = 300.0
LATENCY_MIN_REQUESTS = 10


def _latency(raw: Any, settings: Settings) -> Analysis | None:
    """spec.monitoring.latency as the analysis it runs (None: not set)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidSpec("spec.monitoring.latency must be an object")
    p99, errors = raw.get("p99Ms"), raw.get("errorRate")
    for key, value, top in (("p99Ms", p99, None), ("errorRate", errors, 1.0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                                  or (top is not None and value > top)):
            bound = " and at most 1" if top else ""
            raise InvalidSpec(f"spec.monitoring.latency.{key} must be a number of at least 0{bound}, got {value!r}")
    if p99 is None and errors is None:
        raise InvalidSpec("spec.monitoring.latency needs p99Ms or errorRate (or both)")
    window = duration(raw.get("window"), "spec.monitoring.latency.window")
    prometheus = prometheus_url(raw.get("prometheusUrl"), "spec.monitoring.latency.prometheusUrl", settings)
    if window is None:
        window = DEFAULT_LATENCY_WINDOW_SECONDS
    return Analysis(prometheus=prometheus, max_error_rate=None if errors is None else float(errors),
                    max_p99_latency_ms=None if p99 is None else float(p99), min_requests=LATENCY_MIN_REQUESTS,
                    window_seconds=max(window, 1.0), queries={})


def _max_model_age(raw: Any) -> float | None:
    monitoring = obj(raw, "spec.monitoring")
    seconds = duration(monitoring.get("maxModelAge"), "spec.monitoring.maxModelAge")
    if seconds is None:
        return None
    if seconds <= 0:
        raise InvalidSpec("spec.monitoring.maxModelAge must be above 0, e.g. 30d")
    return seconds


def _disruption_budget(raw: Any, replicas: int) -> tuple[str, int | str] | None:
    """The spec's budget; by default at most one pod down from two replicas (autoscaled: minReplicas) on."""
    budget = obj(raw, "spec.disruptionBudget")
    given = [k for k in ("minAvailable", "maxUnavailable") if budget.get(k) is not None]
    if len(given) > 1:
        raise InvalidSpec("spec.disruptionBudget sets minAvailable or maxUnavailable, not both")
    if not given:
        return ("maxUnavailable", 1) if replicas >= 2 else None
    key = given[0]
    return key, _pods_or_percent(budget[key], f"spec.disruptionBudget.{key}", 0)


def _pods_or_percent(value: Any, path: str, default: int | str) -> int | str:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return value
    raise InvalidSpec(f"{path} must be a number of pods or a percentage such as 25%, got {value!r}")


def _rollout(raw: Any) -> dict[str, int | str]:
    rollout = obj(raw, "spec.rollout")
    surge = _pods_or_percent(rollout.get("maxSurge"), "spec.rollout.maxSurge", "25%")
    unavailable = _pods_or_percent(rollout.get("maxUnavailable"), "spec.rollout.maxUnavailable", 0)
    if int(str(surge).rstrip("%")) == 0 and int(str(unavailable).rstrip("%")) == 0:
        raise InvalidSpec("spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0: "
                          "the rollout could never replace a pod")
    return {"max_surge": surge, "max_unavailable": unavailable}


def _auth(raw: Any) -> AuthSpec:
    auth = obj(raw, "spec.auth")
    mode = choice(auth.get("mode"), "spec.auth.mode", AUTH_MODES, "none")
    audience = auth.get("audience") or AuthSpec.audience
    if not isinstance(audience, str):
        raise InvalidSpec("spec.auth.audience must be a string")
    ref = obj(auth.get("apiKeySecretRef"), "spec.auth.apiKeySecretRef")
    secret = ref.get("name")
    if secret is not None and (not isinstance(secret, str) or not DNS_SUBDOMAIN.fullmatch(secret)):
        raise InvalidSpec(f"spec.auth.apiKeySecretRef.name must be a Secret name, got {secret!r}")
    if mode == "apiKey" and not secret:
        raise InvalidSpec("spec.auth.mode apiKey needs spec.auth.apiKeySecretRef.name: the Secret whose values "
                          "are the keys callers may send")
    return AuthSpec(mode=mode, audience=audience, api_key_secret=secret if mode == "apiKey" else None)


_PEER_KEYS = {"namespaceSelector", "podSelector"}


def _allow_from(raw: Any) -> tuple[dict[str, Any], ...]:
    policy = obj(raw, "spec.networkPolicy")
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


def _number(value: Any, path: str, minimum: float = 0.0) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise InvalidSpec(f"{path} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _weight(value: Any, path: str) -> int:
    weight = integer(value, path, 0)
    if weight > 100:
        raise InvalidSpec(f"{path} must be between 0 and 100, got {weight}")
    return weight


def _traffic(raw: Any) -> TrafficSpec:
    traffic = obj(raw, "spec.traffic")
    router = traffic.get("router") or "auto"
    if router not in ROUTERS:
        raise InvalidSpec(f"spec.traffic.router must be one of {', '.join(ROUTERS)}, got {router!r}")
    gateway = obj(traffic.get("gatewayAPI"), "spec.traffic.gatewayAPI")
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
    canary = obj(raw, "spec.canary")
    model = obj(canary.get("model"), "spec.canary.model")
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
        step = obj(raw_step, f"spec.canary.steps[{i}]")
        steps.append(Step(weight=_weight(step.get("weight"), f"spec.canary.steps[{i}].weight"),
                          pause_seconds=duration(step.get("pause"), f"spec.canary.steps[{i}].pause")))
    if uri is None and not steps:
        raise InvalidSpec("spec.canary needs model.uri (a manual canary at spec.canary.weight) or steps "
                          "(a progressive rollout of each new version)")

    analysis = None
    raw_analysis = canary.get("analysis")
    if raw_analysis is not None:
        a = obj(raw_analysis, "spec.canary.analysis")
        if not steps:
            raise InvalidSpec("spec.canary.analysis runs between steps: set spec.canary.steps too")
        prometheus = prometheus_url(a.get("prometheusUrl"), "spec.canary.analysis.prometheusUrl", settings)
        max_error = _number(a.get("maxErrorRate"), "spec.canary.analysis.maxErrorRate")
        if max_error is not None and max_error > 1:
            raise InvalidSpec(f"spec.canary.analysis.maxErrorRate is a share between 0 and 1, got {max_error:g}")
        max_p99 = _number(a.get("maxP99LatencyMs"), "spec.canary.analysis.maxP99LatencyMs")
        max_drift = _number(a.get("maxPredictionDrift"), "spec.canary.analysis.maxPredictionDrift")
        if max_drift is not None and max_drift <= 0:
            raise InvalidSpec("spec.canary.analysis.maxPredictionDrift must be above 0 (a PSI, e.g. 0.2)")
        if max_error is None and max_p99 is None and max_drift is None:
            raise InvalidSpec("spec.canary.analysis needs maxErrorRate, maxP99LatencyMs or maxPredictionDrift")
        window_seconds = duration(a.get("window"), "spec.canary.analysis.window")
        queries = obj(a.get("queries"), "spec.canary.analysis.queries")
        unknown = set(queries) - {"errorRate", "p99LatencyMs", "requests", "predictionDrift"}
        if unknown or not all(isinstance(q, str) and q.strip() for q in queries.values()):
            extra = f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""
            raise InvalidSpec("spec.canary.analysis.queries takes non-empty PromQL strings under errorRate, "
                              f"p99LatencyMs, requests and predictionDrift{extra}")
        analysis = Analysis(
            prometheus=prometheus,
            max_error_rate=max_error,
            max_p99_latency_ms=max_p99,
            min_requests=integer(a.get("minRequests"), "spec.canary.analysis.minRequests", 10),
            window_seconds=window_seconds,
            queries={str(k): str(v) for k, v in queries.items()},
            max_prediction_drift=max_drift,
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
        capacity=None if canary.get("capacity") in (None, "") else choice(
            canary.get("capacity"), "spec.canary.capacity", ("additive", "borrow"), "additive"),
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
    secret_ref = obj(registry.get("credentialsSecretRef"), "spec.registry.credentialsSecretRef")
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
