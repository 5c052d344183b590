"""Plan: from the spec, the observed world and the registry's answers to what should run. Pure.

The canary planner (`canary.plan`) decides which versions run and at which weight; this module adds
the traffic router in effect and turns a weight into replica counts, so that `desired` only has to
render. No I/O, no clock: time comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .autoscaling import canary_share
from .canary import Observed, Verdict
from .canary import Plan as CanaryPlan
from .canary import plan as canary_plan
from .canary_state import PAUSED, STARTING, CanaryState
from .names import CANARY, template_uri
from .observe import Rollout, World, deployment_key
from .registry import ResolvedModel
from .spec import DeploymentSpec
from .traffic import canary_replicas_for_route, effective_weight, split_replicas


@dataclass(frozen=True)
class Resolved:
    """What the registry (or, while it cannot answer, the last status) says each URI points at."""

    #: spec.model.uri now; the status' version while the registry fails after a restart.
    target: ResolvedModel | None
    #: What the stable track serves according to status.model.
    current: ResolvedModel | None
    #: The canary candidate (canary.model.uri's version, else spec.model.uri's) and its URI.
    candidate: ResolvedModel | None
    candidate_uri: str
    #: The URI status.model was resolved from.
    current_uri: str


@dataclass(frozen=True)
class Decision:
    rollout: CanaryPlan
    router: str
    router_problem: str | None
    stable_replicas: int
    canary_replicas: int
    #: The URI each track's version was resolved from (its resolved-from annotation, status.model.uri).
    stable_from: str
    canary_from: str
    #: status.canary with what the router really does (effective weight, mirrored share).
    canary_status: CanaryState | None = field(default=None)


def choose_router(spec: DeploymentSpec, gateway_api: bool) -> tuple[str, str | None]:
    """The traffic router in effect and, when the spec's wish cannot be met, why."""
    wanted = spec.traffic.router
    router = "replicas"
    if wanted == "gatewayAPI" or (wanted == "auto" and spec.traffic.parent_refs):
        router = "gatewayAPI" if gateway_api else "replicas"
        if router == "replicas" and wanted == "gatewayAPI":
            return router, ("spec.traffic.router is gatewayAPI but this cluster does not serve HTTPRoutes "
                            "(gateway.networking.k8s.io/v1): install the Gateway API CRDs or use "
                            "router: replicas; no canary traffic until then")
    if spec.canary is not None and spec.canary.shadow and router != "gatewayAPI":
        return router, ("spec.canary.shadow mirrors requests through a Gateway API HTTPRoute, which is not "
                        "available here (needs the HTTPRoute CRD and spec.traffic.gatewayAPI.parentRefs)")
    return router, None


def decide(spec: DeploymentSpec, world: World, resolved: Resolved, state: CanaryState | None,
           rejected: dict[str, Any], annotations: dict[str, str], verdict: Verdict | None, wall: float) -> Decision:
    router, router_problem = choose_router(spec, world.gateway_api)
    stable_rollout = Rollout.from_deployment(world.owned(deployment_key(world.owner)))
    canary_dep = world.owned(deployment_key(world.owner, CANARY))
    canary_rollout = Rollout.from_deployment(canary_dep)
    candidate = resolved.candidate
    rollout = canary_plan(spec, Observed(
        stable=resolved.current,
        target=resolved.target,
        candidate=candidate,
        previous=state,
        rejected=rejected,
        canary_ready=(candidate is not None and canary_rollout.complete
                      and template_uri(canary_dep) == candidate.pinned),
        canary_failure=canary_rollout.failure,
        stable_version=stable_rollout.template_version,
        stable_complete=stable_rollout.complete,
        annotations=annotations,
        router_problem=router_problem,
    ), wall, verdict)

    stable_replicas, canary_replicas = spec.replicas, 0
    if spec.autoscaling is not None:
        # the HPA sizes stable (its count is only read here); a canary gets its share of that size
        stable_replicas = autoscaled_replicas(world, spec.autoscaling.min_replicas)
        if rollout.canary is not None and router == "replicas":
            canary_replicas = canary_share(stable_replicas, rollout.weight or _start_weight(spec))
        elif rollout.canary is not None:
            canary_replicas = canary_replicas_for_route(stable_replicas, _max_weight(spec))
    elif rollout.canary is not None and router == "replicas":
        weight = rollout.weight or _start_weight(spec)
        if _capacity(spec, router) == "borrow":
            stable_replicas, canary_replicas = split_replicas(spec.replicas, weight)
        else:
            canary_replicas = canary_share(spec.replicas, weight)
    elif rollout.canary is not None:
        canary_replicas = canary_replicas_for_route(spec.replicas, _max_weight(spec))
        if _capacity(spec, router) == "borrow" and spec.replicas > 0:
            stable_replicas = max(1, spec.replicas - canary_replicas)

    stable = rollout.stable
    if stable is not None and stable is resolved.target:
        stable_from = spec.model_uri
    elif stable is not None and stable is resolved.current:
        stable_from = resolved.current_uri or spec.model_uri
    else:
        stable_from = resolved.candidate_uri  # the candidate, or a canary version held from status

    canary_status = rollout.status
    if canary_status is not None:
        weight = canary_status.weight
        replicas = None
        if router == "replicas":
            # The Service spreads requests over ready pods: the split is the replica ratio.
            taking = canary_status.phase not in (STARTING, PAUSED) or canary_status.weight
            weight = effective_weight(stable_replicas, canary_replicas) if taking else 0
            replicas = {"stable": stable_replicas, "canary": canary_replicas}
        shadow = spec.canary is not None and spec.canary.shadow
        canary_status = canary_status.with_(
            weight=0 if shadow else weight, mirror_percent=weight if shadow else None, replicas=replicas,
            router=router, desired_weight=rollout.weight)
    return Decision(rollout, router, router_problem, stable_replicas, canary_replicas, stable_from,
                    resolved.candidate_uri, canary_status)


def autoscaled_replicas(world: World, floor: int) -> int:
    """The stable Deployment's count as the HPA left it (`floor` until the Deployment exists)."""
    live = world.owned(deployment_key(world.owner))
    replicas = ((live or {}).get("spec") or {}).get("replicas")
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else floor


def _capacity(spec: DeploymentSpec, router: str) -> str:
    """Whether a canary's pods come from stable ("borrow") or on top of it ("additive")."""
    chosen = spec.canary.capacity if spec.canary is not None else None
    return chosen or ("borrow" if router == "replicas" else "additive")


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
