"""Desired children: the objects that should exist for a decision, and the ones that should not. Pure.

`apply` writes exactly this: each desired object (only where it is ours or absent) and the removal
of each unwanted one (only where it is ours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .autoscaling import engine_in_effect, render_hpa, render_scaled_object, replicas_handover
from .config import Settings
from .names import CANARY, STABLE, Owner
from .observe import (
    ChildKey,
    World,
    autoscaler_key,
    budget_key,
    deployment_key,
    policy_key,
    route_key,
    rule_key,
    scaled_object_key,
    service_key,
)
from .plan import Decision
from .render import (
    render_deployment,
    render_disruption_budget,
    render_http_route,
    render_network_policy,
    render_service,
)
from .spec import DeploymentSpec
from .thresholds import render_prometheus_rule


@dataclass(frozen=True)
class Desired:
    objects: dict[ChildKey, dict[str, Any]]
    #: Children that should not exist (removed when, and only when, they are ours).
    unwanted: tuple[ChildKey, ...]
    #: Fields applied after `objects` under the handover field manager (see autoscaling.py).
    handover: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)


def desired_children(owner: Owner, spec: DeploymentSpec, decision: Decision, settings: Settings,
                     world: World) -> Desired:
    rollout = decision.rollout
    if rollout.stable is None:
        return Desired({}, ())  # nothing resolved yet: leave whatever exists as it is
    scaling = _scaling(owner, spec, decision, world)
    objects = {
        deployment_key(owner): render_deployment(owner, spec, rollout.stable, settings,
                                                 replicas=decision.stable_replicas, resolved_from=decision.stable_from,
                                                 autoscaled=scaling.autoscaled),
        service_key(owner): render_service(owner, settings),
        **scaling.objects,
    }
    unwanted: list[ChildKey] = list(scaling.unwanted)
    if spec.allow_from:
        objects[policy_key(owner)] = render_network_policy(owner, spec)
    else:
        unwanted.append(policy_key(owner))
    if world.prometheus_rules and spec.latency is not None:
        objects[rule_key(owner)] = render_prometheus_rule(owner, spec.latency, rollout.stable.name)
    elif world.prometheus_rules:
        unwanted.append(rule_key(owner))
    if spec.disruption_budget is not None:
        objects[budget_key(owner)] = render_disruption_budget(owner, spec.disruption_budget)
    else:
        unwanted.append(budget_key(owner))
    if rollout.canary is not None:
        analysis = spec.canary.analysis if spec.canary else None
        compared = analysis is not None and analysis.max_prediction_drift is not None
        objects[deployment_key(owner, CANARY)] = render_deployment(
            owner, spec, rollout.canary, settings, track=CANARY, replicas=decision.canary_replicas,
            resolved_from=decision.canary_from, baseline=rollout.stable.version if compared else None)
    else:
        unwanted.append(deployment_key(owner, CANARY))
    if decision.router == "gatewayAPI":
        objects[service_key(owner, STABLE)] = render_service(owner, settings, STABLE)
        shadow = spec.canary is not None and spec.canary.shadow
        if rollout.canary is not None:
            objects[service_key(owner, CANARY)] = render_service(owner, settings, CANARY)
            objects[route_key(owner)] = render_http_route(owner, spec, rollout.weight, shadow)
        else:
            objects[route_key(owner)] = render_http_route(owner, spec, None)
            unwanted.append(service_key(owner, CANARY))
    elif world.gateway_api:
        unwanted += [route_key(owner), service_key(owner, STABLE), service_key(owner, CANARY)]
    return Desired(objects, tuple(unwanted), scaling.handover)


@dataclass(frozen=True)
class _Scaling:
    objects: dict[ChildKey, dict[str, Any]]
    unwanted: tuple[ChildKey, ...]
    handover: dict[ChildKey, dict[str, Any]]
    #: An autoscaler of ours is there: it owns stable's replica count, which is no longer applied.
    autoscaled: bool


def _scaling(owner: Owner, spec: DeploymentSpec, decision: Decision, world: World) -> _Scaling:
    """The HPA or ScaledObject of spec.autoscaling (and the other one's removal), and the replica handover."""
    scaling, stable = spec.autoscaling, decision.rollout.stable
    engine, _ = engine_in_effect(scaling, world.keda)
    scaler = scaled_object_key(owner) if engine == "keda" else autoscaler_key(owner)
    served = [autoscaler_key(owner), *([scaled_object_key(owner)] if world.keda else [])]
    unwanted = tuple(k for k in served if scaling is None or k != scaler)
    if scaling is None or stable is None:
        return _Scaling({}, unwanted, {}, autoscaled=False)
    freeze = decision.rollout.canary is not None  # stable does not shrink under a running canary's share
    rendered = (render_scaled_object(owner, scaling, stable.name, freeze) if engine == "keda"
                else render_hpa(owner, scaling, freeze_scale_down=freeze))
    # the autoscaler owns stable's count once it is there; until then the count is applied and handed over
    autoscaled = world.owned(scaler) is not None
    handover = {} if autoscaled else {deployment_key(owner): replicas_handover(owner, decision.stable_replicas)}
    return _Scaling({scaler: rendered}, unwanted, handover, autoscaled)
