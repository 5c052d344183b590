"""`spec.autoscaling`: a HorizontalPodAutoscaler for the stable Deployment, and who owns `replicas` then.

While autoscaling is on, the HPA owns the stable Deployment's `spec.replicas`: the operator leaves the
field out of what it applies (it never writes the user's spec either, so Argo CD stays in sync). Leaving
out a field the operator alone owns would make server-side apply remove it, and the Deployment would drop
to one replica until the HPA reacts; so until the HPA is observed, the operator also applies the current
count under a second field manager (`<manager>-handover`, the Kubernetes docs' ownership transfer),
which keeps the count when the operator's own apply stops carrying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .fields import InvalidSpec, choice, integer, obj, prometheus_url
from .names import STABLE, Owner, deployment_name
from .observe import KEDA_API_VERSION
from .promql import promql_string
from .urls import BaseURL

#: The scoring server's gauge of requests being served, per pod (through the custom metrics API).
IN_FLIGHT_METRIC = "modelpilot_requests_in_flight"
HPA_API_VERSION = "autoscaling/v2"
MAX_REPLICAS = 1000


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    #: Average requests in flight per pod the HPA aims at (None: not a metric).
    target_in_flight: float | None
    #: Average CPU utilization (percent of the request) the HPA aims at (None: not a metric).
    target_cpu: int | None
    #: autoscaling/v2 HorizontalPodAutoscalerBehavior, as given.
    behavior: dict[str, Any] = field(default_factory=dict)
    #: "hpa" (an HPA; in-flight through the custom metrics API) or "keda" (a KEDA ScaledObject; in-flight
    #: through its Prometheus trigger), where KEDA's CRDs are served.
    engine: str = "hpa"
    #: The Prometheus KEDA's trigger asks (engine keda with targetInFlight).
    prometheus: BaseURL | None = None


def parse_autoscaling(raw: Any, settings: Settings) -> Autoscaling | None:
    if raw is None:
        return None
    raw = obj(raw, "spec.autoscaling")
    unknown = sorted(set(raw) - {"minReplicas", "maxReplicas", "targetInFlight", "targetCPUUtilization", "behavior",
                                 "engine", "prometheusUrl"})
    if unknown:
        raise InvalidSpec(f"spec.autoscaling.{unknown[0]} is not a field of spec.autoscaling")
    if raw.get("maxReplicas") is None:
        raise InvalidSpec("spec.autoscaling.maxReplicas is required")
    low = integer(raw.get("minReplicas"), "spec.autoscaling.minReplicas", 1, minimum=1, maximum=MAX_REPLICAS)
    high = integer(raw.get("maxReplicas"), "spec.autoscaling.maxReplicas", 1, minimum=1, maximum=MAX_REPLICAS)
    if high < low:
        raise InvalidSpec(f"spec.autoscaling.maxReplicas ({high}) is below minReplicas ({low})")
    in_flight = raw.get("targetInFlight")
    if in_flight is not None and (isinstance(in_flight, bool) or not isinstance(in_flight, int | float)
                                  or not 0 < in_flight <= 10_000):
        raise InvalidSpec(f"spec.autoscaling.targetInFlight must be a number above 0, got {in_flight!r}")
    cpu = raw.get("targetCPUUtilization")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or not 1 <= cpu <= 1000):
        raise InvalidSpec(f"spec.autoscaling.targetCPUUtilization must be a percentage from 1, got {cpu!r}")
    if in_flight is None and cpu is None:
        raise InvalidSpec("spec.autoscaling needs targetInFlight or targetCPUUtilization (or both)")
    behavior = raw.get("behavior") or {}
    if not isinstance(behavior, dict) or set(behavior) - {"scaleUp", "scaleDown"}:
        raise InvalidSpec("spec.autoscaling.behavior takes scaleUp and scaleDown (autoscaling/v2 rules)")
    # (rendered as objects: a string or null would crash the render)
    behavior = {way: obj(rules, f"spec.autoscaling.behavior.{way}") for way, rules in behavior.items()}
    engine = choice(raw.get("engine"), "spec.autoscaling.engine", ENGINES, "hpa")
    prometheus = None
    if engine == "keda" and in_flight is not None:
        prometheus = prometheus_url(raw.get("prometheusUrl"), "spec.autoscaling.prometheusUrl", settings,
                                    needed_for="KEDA's trigger reads targetInFlight from it")
    return Autoscaling(low, high, None if in_flight is None else float(in_flight), cpu, behavior, engine, prometheus)


ENGINES = ("hpa", "keda")


def engine_in_effect(scaling: Autoscaling | None, keda_served: bool) -> tuple[str | None, str | None]:
    """(the engine that scales, why it is not the one the spec asks for); (None, None) without autoscaling."""
    if scaling is None:
        return None, None
    if scaling.engine == "keda" and not keda_served:
        return "hpa", ("spec.autoscaling.engine is keda but KEDA's CRDs (keda.sh/v1alpha1 ScaledObject) are not "
                       "installed: scaling with a HorizontalPodAutoscaler instead")
    return scaling.engine, None


def _quantity(value: float) -> str:
    """An HPA averageValue: whole numbers as they are, fractions in milli-units (1.5 → 1500m)."""
    return str(int(value)) if value == int(value) else f"{round(value * 1000)}m"


def _behavior(scaling: Autoscaling, freeze_scale_down: bool) -> dict[str, Any]:
    """The spec's scaling behavior; with `freeze_scale_down`, scale-down disabled (a canary runs)."""
    behavior = {k: dict(v) for k, v in scaling.behavior.items()}
    if freeze_scale_down:
        behavior["scaleDown"] = {**behavior.get("scaleDown", {}), "selectPolicy": "Disabled"}
    return behavior


def _stable_target(owner: Owner) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(owner, STABLE)}


def render_hpa(owner: Owner, scaling: Autoscaling, freeze_scale_down: bool) -> dict[str, Any]:
    """The HPA of the stable Deployment; `freeze_scale_down` while a canary runs (its share is of stable's size)."""
    metrics: list[dict[str, Any]] = []
    if scaling.target_in_flight is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": IN_FLIGHT_METRIC},
            "target": {"type": "AverageValue", "averageValue": _quantity(scaling.target_in_flight)}}})
    if scaling.target_cpu is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu}}})
    behavior = _behavior(scaling, freeze_scale_down)
    spec: dict[str, Any] = {
        "scaleTargetRef": _stable_target(owner),
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
    }
    if behavior:
        spec["behavior"] = behavior
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": owner.child_metadata(owner.name),
        "spec": spec,
    }


def render_scaled_object(owner: Owner, scaling: Autoscaling, model: str, freeze_scale_down: bool) -> dict[str, Any]:
    """A KEDA ScaledObject of the stable Deployment: requests in flight from Prometheus, CPU from metrics-server.

    The in-flight query sums over the model's pods in the namespace (every version: during a rollout both
    serve); KEDA divides it by the pods (metricType AverageValue), as the HPA's Pods metric does.
    """
    triggers: list[dict[str, Any]] = []
    if scaling.target_in_flight is not None:
        assert scaling.prometheus is not None
        selector = f'namespace="{promql_string(owner.namespace)}",model="{promql_string(model)}"'
        triggers.append({"type": "prometheus", "metricType": "AverageValue", "metadata": {
            "serverAddress": str(scaling.prometheus),
            "query": f"sum({IN_FLIGHT_METRIC}{{{selector}}})",
            "threshold": f"{scaling.target_in_flight:g}"}})
    if scaling.target_cpu is not None:
        triggers.append({"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(scaling.target_cpu)}})
    behavior = _behavior(scaling, freeze_scale_down)
    spec: dict[str, Any] = {
        "scaleTargetRef": _stable_target(owner),
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "triggers": triggers,
    }
    if behavior:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": owner.child_metadata(owner.name),
        "spec": spec,
    }


def replicas_handover(owner: Owner, replicas: int) -> dict[str, Any]:
    """What the handover field manager applies: only the stable Deployment's replica count."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deployment_name(owner, STABLE), "namespace": owner.namespace},
            "spec": {"replicas": replicas}}


def autoscaling_status(engine: str | None, hpa: dict[str, Any] | None, scaled: dict[str, Any] | None,
                       deployment: dict[str, Any] | None, problem: str | None = None) -> dict[str, Any] | None:
    """status.autoscaling: the HPA's own view, or for KEDA the stable Deployment's counts and the
    ScaledObject's Ready condition (None: no autoscaling)."""
    if engine is None:
        return None
    out: dict[str, Any] = {"engine": engine}
    if engine == "hpa" and hpa is not None:
        status = hpa.get("status") or {}
        out.update(currentReplicas=int(status.get("currentReplicas") or 0),
                   desiredReplicas=int(status.get("desiredReplicas") or 0))
        able = next((c for c in status.get("conditions") or [] if c.get("type") == "ScalingActive"), None)
        if able is not None and able.get("status") == "False":
            problem = problem or f"{able.get('reason')}: {able.get('message')}"
    elif engine == "keda" and scaled is not None:
        out.update(currentReplicas=int(((deployment or {}).get("status") or {}).get("replicas") or 0),
                   desiredReplicas=int(((deployment or {}).get("spec") or {}).get("replicas") or 0))
        ready = next((c for c in (scaled.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                     None)
        if ready is not None and ready.get("status") == "False":
            problem = problem or f"{ready.get('reason')}: {ready.get('message')}"
    if problem:
        out["problem"] = problem
    return out


def canary_share(stable: int, weight: int) -> int:
    """Canary pods beside `stable` autoscaled pods so the replica ratio gives it `weight` percent."""
    if weight <= 0 or stable <= 0:
        return 0 if weight <= 0 else 1
    if weight >= 100:
        return stable
    return max(1, round(stable * weight / (100 - weight)))

