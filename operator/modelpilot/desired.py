"""Desired children: the objects that should exist for a decision, and the ones that should not. Pure.

`apply` writes exactly this: each desired object (only where it is ours or absent) and the removal
of each unwanted one (only where it is ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .names import CANARY, STABLE, Owner
from .observe import ChildKey, deployment_key, policy_key, route_key, service_key
from .plan import Decision
from .render import render_deployment, render_http_route, render_network_policy, render_service
from .spec import DeploymentSpec


@dataclass(frozen=True)
class Desired:
    objects: dict[ChildKey, dict[str, Any]]
    #: Children that should not exist (removed when, and only when, they are ours).
    unwanted: tuple[ChildKey, ...]


def desired_children(owner: Owner, spec: DeploymentSpec, decision: Decision, settings: Settings,
                     gateway_api: bool) -> Desired:
    rollout = decision.rollout
    if rollout.stable is None:
        return Desired({}, ())  # nothing resolved yet: leave whatever exists as it is
    objects = {
        deployment_key(owner): render_deployment(owner, spec, rollout.stable, settings,
                                                 replicas=decision.stable_replicas, resolved_from=decision.stable_from),
        service_key(owner): render_service(owner, settings),
    }
    unwanted: list[ChildKey] = []
    if spec.allow_from:
        objects[policy_key(owner)] = render_network_policy(owner, spec)
    else:
        unwanted.append(policy_key(owner))
    if rollout.canary is not None:
        objects[deployment_key(owner, CANARY)] = render_deployment(
            owner, spec, rollout.canary, settings, track=CANARY, replicas=decision.canary_replicas,
            resolved_from=decision.canary_from)
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
    elif gateway_api:
        unwanted += [route_key(owner), service_key(owner, STABLE), service_key(owner, CANARY)]
    return Desired(objects, tuple(unwanted))
