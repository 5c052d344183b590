"""spec.autoscaling: the HPA, who owns replicas, the handover, canary shares and status."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot.autoscaling import autoscaling_status, canary_share, engine_in_effect, render_hpa
from modelpilot.canary import Plan as CanaryPlan
from modelpilot.children import apply_children
from modelpilot.desired import desired_children
from modelpilot.observe import World, autoscaler_key, deployment_key, scaled_object_key
from modelpilot.plan import Decision, autoscaled_replicas
from modelpilot.spec import InvalidSpec, parse_spec
from tests.unit.test_render import OWNER, RESOLVED, SETTINGS

BASE: dict[str, Any] = {"model": {"uri": "models:/fraud-detector@champion"}}
SCALING = {"minReplicas": 2, "maxReplicas": 10, "targetInFlight": 4, "targetCPUUtilization": 70,
           "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}}}


def test_the_hpa_targets_stable_with_in_flight_and_cpu_metrics() -> None:
    spec = parse_spec({**BASE, "autoscaling": SCALING}, SETTINGS)
    assert spec.autoscaling is not None
    hpa = render_hpa(OWNER, spec.autoscaling, freeze_scale_down=False)
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": OWNER.name}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"] == [
        {"type": "Pods", "pods": {"metric": {"name": "modelpilot_requests_in_flight"},
                                  "target": {"type": "AverageValue", "averageValue": "4"}}},
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    assert hpa["spec"]["behavior"] == {"scaleUp": {"stabilizationWindowSeconds": 0}}
    frozen = render_hpa(OWNER, spec.autoscaling, freeze_scale_down=True)
    assert frozen["spec"]["behavior"]["scaleDown"] == {"selectPolicy": "Disabled"}
    half = parse_spec({**BASE, "autoscaling": {"maxReplicas": 3, "targetInFlight": 1.5}}, SETTINGS).autoscaling
    assert half is not None
    assert render_hpa(OWNER, half, False)["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1500m"


@pytest.mark.parametrize(("scaling", "says"), [
    ({"minReplicas": 1, "targetInFlight": 2}, "maxReplicas is required"),
    ({"minReplicas": 5, "maxReplicas": 2, "targetInFlight": 2}, "below minReplicas"),
    ({"maxReplicas": 2}, "needs targetInFlight or targetCPUUtilization"),
    ({"maxReplicas": 0, "targetInFlight": 2}, "maxReplicas must be a whole number"),
    ({"maxReplicas": 2, "targetInFlight": 0}, "targetInFlight must be a number above 0"),
    ({"maxReplicas": 2, "targetCPUUtilization": "80%"}, "targetCPUUtilization must be a percentage"),
    ({"maxReplicas": 2, "targetInFlight": 1, "engine": "knative"}, "engine must be one of hpa, keda"),
    ({"maxReplicas": 2, "targetInFlight": 1, "engine": "keda"}, "prometheusUrl is not set"),
    ({"maxReplicas": 2, "targetInFlight": 1, "replicas": 3}, "replicas is not a field"),
    ({"maxReplicas": 2, "targetInFlight": 1, "behavior": {"sideways": {}}}, "behavior takes scaleUp and scaleDown"),
    ({"maxReplicas": 2, "targetInFlight": 1, "behavior": {"scaleUp": "fast"}}, "behavior.scaleUp must be an object"),
])
def test_bad_autoscaling_names_the_field(scaling: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.autoscaling") as caught:
        parse_spec({**BASE, "autoscaling": scaling}, SETTINGS)
    assert says in str(caught.value)


def _desired(spec_raw: dict[str, Any], objects: dict[Any, Any], canary: bool = False) -> Any:
    spec = parse_spec(spec_raw, SETTINGS)
    world = World(OWNER, objects, gateway_api=False)
    replicas = autoscaled_replicas(world, spec.autoscaling.min_replicas) if spec.autoscaling else spec.replicas
    plan = CanaryPlan(stable=RESOLVED, canary=RESOLVED if canary else None, weight=20 if canary else 0)
    decision = Decision(plan, "replicas", None, replicas, canary_share(replicas, 20) if canary else 0,
                        BASE["model"]["uri"], BASE["model"]["uri"])
    return desired_children(OWNER, spec, decision, SETTINGS, world)


class Writer:
    def __init__(self) -> None:
        self.applied: list[tuple[str, dict[str, Any]]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.applied.append((field_manager, obj))
        return obj

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return True


def test_replicas_are_handed_over_until_the_hpa_is_there_then_never_applied() -> None:
    spec = {**BASE, "replicas": 7, "autoscaling": SCALING}
    # first: no Deployment, no HPA → create at minReplicas, hand the count over, create the HPA
    first = _desired(spec, {})
    assert first.objects[deployment_key(OWNER)]["spec"]["replicas"] == 2  # spec.replicas (7) is not used
    assert autoscaler_key(OWNER) in first.objects
    assert first.handover == {deployment_key(OWNER): {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": OWNER.name, "namespace": OWNER.namespace},
        "spec": {"replicas": 2}}}
    writer = Writer()
    apply_children(writer, World(OWNER, {}, False), first, "modelpilot")
    managers = [(m, o["kind"]) for m, o in writer.applied]
    assert managers.index(("modelpilot-handover", "Deployment")) > managers.index(("modelpilot", "Deployment"))
    # the HPA is there and scaled stable to 5: replicas are no longer applied, nothing is handed over
    live_dep = {**first.objects[deployment_key(OWNER)], "spec": {**first.objects[deployment_key(OWNER)]["spec"],
                                                                 "replicas": 5}}
    hpa = {**first.objects[autoscaler_key(OWNER)], "status": {"currentReplicas": 5, "desiredReplicas": 5}}
    later = _desired(spec, {deployment_key(OWNER): live_dep, autoscaler_key(OWNER): hpa})
    assert "replicas" not in later.objects[deployment_key(OWNER)]["spec"]
    assert later.handover == {}
    # autoscaling removed: the HPA goes and spec.replicas is applied again
    off = _desired({**BASE, "replicas": 7}, {deployment_key(OWNER): live_dep, autoscaler_key(OWNER): hpa})
    assert off.objects[deployment_key(OWNER)]["spec"]["replicas"] == 7
    assert autoscaler_key(OWNER) in off.unwanted


def test_a_canary_gets_its_share_of_the_current_stable_size_and_stable_stops_scaling_down() -> None:
    live = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": OWNER.name, "ownerReferences": [OWNER.reference()]}, "spec": {"replicas": 8}}
    hpa = {"metadata": {"ownerReferences": [OWNER.reference()]}}
    desired = _desired({**BASE, "autoscaling": SCALING}, {deployment_key(OWNER): live, autoscaler_key(OWNER): hpa},
                       canary=True)
    assert desired.objects[deployment_key(OWNER, "canary")]["spec"]["replicas"] == 2  # 8 * 20/80
    assert desired.objects[autoscaler_key(OWNER)]["spec"]["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
    assert [canary_share(s, w) for s, w in ((4, 20), (4, 50), (1, 10), (3, 100), (5, 0))] == [1, 4, 1, 3, 0]


def test_status_reports_the_hpas_view_and_why_it_cannot_scale() -> None:
    assert autoscaling_status(None, None, None, None) is None
    hpa = {"status": {"currentReplicas": 2, "desiredReplicas": 3, "conditions": [
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "unable to get metric modelpilot_requests_in_flight"}]}}
    assert autoscaling_status("hpa", hpa, None, None) == {"engine": "hpa", "currentReplicas": 2, "desiredReplicas": 3,
                                                          "problem": ("FailedGetPodsMetric: unable to get metric "
                                                                      "modelpilot_requests_in_flight")}
    scaled = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    deployment = {"spec": {"replicas": 4}, "status": {"replicas": 3}}
    assert autoscaling_status("keda", None, scaled, deployment) == {"engine": "keda", "currentReplicas": 3,
                                                                     "desiredReplicas": 4}


def test_autoscaled_budgets_and_spread_follow_the_autoscaler_bounds() -> None:
    spec = parse_spec({**BASE, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetInFlight": 2}}, SETTINGS)
    assert spec.disruption_budget == ("maxUnavailable", 1)
    single = parse_spec({**BASE, "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetInFlight": 2}}, SETTINGS)
    assert single.disruption_budget is None and single.most_replicas == 4


KEDA = {**SCALING, "engine": "keda", "prometheusUrl": "http://prometheus.monitoring.svc:9090"}


def test_keda_renders_a_scaled_object_instead_of_the_hpa_where_it_is_served() -> None:
    spec = parse_spec({**BASE, "autoscaling": KEDA}, SETTINGS)
    world = World(OWNER, {}, gateway_api=False, keda=True)
    plan = CanaryPlan(stable=RESOLVED)
    decision = Decision(plan, "replicas", None, 2, 0, BASE["model"]["uri"], BASE["model"]["uri"])
    desired = desired_children(OWNER, spec, decision, SETTINGS, world)
    scaled = desired.objects[scaled_object_key(OWNER)]
    assert autoscaler_key(OWNER) in desired.unwanted and autoscaler_key(OWNER) not in desired.objects
    assert scaled["spec"]["scaleTargetRef"]["name"] == OWNER.name
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 10)
    prom, cpu = scaled["spec"]["triggers"]
    assert prom == {"type": "prometheus", "metricType": "AverageValue", "metadata": {
        "serverAddress": "http://prometheus.monitoring.svc:9090",
        "query": f'sum(modelpilot_requests_in_flight{{namespace="{OWNER.namespace}",model="fraud-detector"}})',
        "threshold": "4"}}
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == SCALING["behavior"]
    assert desired.handover, "the replica count is handed over as with the HPA"
    # without KEDA's CRDs: an HPA, and the status says why
    fallback = desired_children(OWNER, spec, decision, SETTINGS, World(OWNER, {}, gateway_api=False))
    assert autoscaler_key(OWNER) in fallback.objects and scaled_object_key(OWNER) not in fallback.objects
    engine, why = engine_in_effect(spec.autoscaling, keda_served=False)
    assert engine == "hpa" and why is not None and "KEDA's CRDs" in why
    assert autoscaling_status(engine, None, None, None, why) == {"engine": "hpa", "problem": why}
