"""Compute a ModelDeployment's status from what the reconcile observed. Pure: time is passed in.

Conditions follow the Kubernetes API conventions: a list keyed by `type`, `status` True/False/Unknown,
a CamelCase `reason`, a sentence in `message`, `lastTransitionTime` that only moves when `status`
changes, and `observedGeneration`. `Ready` summarises the others, so a person (or Argo CD's health
check) can read one condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import ResolvedModel

READY = "Ready"
MODEL_RESOLVED = "ModelResolved"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_ORDER = (READY, MODEL_RESOLVED, AVAILABLE, PROGRESSING, DEGRADED)


@dataclass(frozen=True)
class Problem:
    """Why the spec could not be resolved or acted on."""

    reason: str
    message: str


@dataclass(frozen=True)
class Rollout:
    """What the stable Deployment reports (None fields when it does not exist yet)."""

    exists: bool = False
    desired: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    #: The Deployment controller has seen our latest template.
    observed: bool = False
    #: Deployment condition Progressing=False/ProgressDeadlineExceeded or ReplicaFailure=True.
    failure: str | None = None

    @classmethod
    def from_deployment(cls, deployment: dict[str, Any] | None) -> Rollout:
        if not deployment:
            return cls()
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation", 0)
        failure = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                failure = cond.get("message") or "progress deadline exceeded"
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                failure = cond.get("message") or "replica failure"
        return cls(
            exists=True,
            desired=int(spec.get("replicas", 1)),
            replicas=int(status.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            observed=int(status.get("observedGeneration", 0)) >= int(generation),
            failure=failure,
        )

    @property
    def complete(self) -> bool:
        """Every replica runs the latest template and nothing old is left."""
        return (self.exists and self.observed and self.updated >= self.desired
                and self.replicas == self.updated and self.available >= self.desired)


def condition(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else "True" if ok else "False"
    return {"type": type_, "status": status, "reason": reason, "message": message}


def merge_conditions(
    previous: list[dict[str, Any]] | None,
    current: list[dict[str, Any]],
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Stamp `observedGeneration` and keep `lastTransitionTime` unless the status flipped."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in current:
        old = before.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        stamped = dict(cond)
        stamped["observedGeneration"] = generation
        stamped["lastTransitionTime"] = now if changed else old.get("lastTransitionTime", now)  # type: ignore[union-attr]
        out.append(stamped)
    return out


def compute_conditions(
    resolved: ResolvedModel | None,
    problem: Problem | None,
    rollout: Rollout,
    previous_version: str | None = None,
) -> list[dict[str, Any]]:
    """The condition list (without timestamps) for one observation.

    `resolved` is what is being served: freshly resolved, or the last known version kept while the
    registry is failing (`problem` is then set too).
    """
    conds: list[dict[str, Any]] = []
    if problem is None and resolved is not None:
        target = f"version {resolved.version}"
        conds.append(condition(MODEL_RESOLVED, True, "Resolved", f"resolved to {resolved.name} {target}"))
    elif problem is not None:
        keep = (f"; still serving the last resolved version {resolved.version}" if resolved else
                "; nothing deployed until it resolves")
        conds.append(condition(MODEL_RESOLVED, False, problem.reason, problem.message + keep))
    else:
        conds.append(condition(MODEL_RESOLVED, None, "Resolving", "resolving the model URI"))

    if not rollout.exists:
        conds.append(condition(AVAILABLE, False, "NotDeployed", "no serving Deployment exists yet"))
    elif rollout.desired == 0:
        conds.append(condition(AVAILABLE, True, "ScaledToZero", "spec.replicas is 0"))
    elif rollout.available >= 1:
        conds.append(condition(AVAILABLE, True, "MinimumReplicasAvailable",
                               f"{rollout.ready}/{rollout.desired} replicas ready"))
    else:
        conds.append(condition(AVAILABLE, False, "NoReplicasReady",
                               f"0/{rollout.desired} replicas ready"))

    if rollout.exists and rollout.failure:
        conds.append(condition(PROGRESSING, False, "RolloutFailed", rollout.failure))
    elif rollout.exists and not rollout.complete:
        version = resolved.version if resolved else "?"
        moving = (f"rolling out version {version} (from {previous_version})"
                  if previous_version and previous_version != version else f"rolling out version {version}")
        conds.append(condition(PROGRESSING, True, "RollingOut",
                               f"{moving}: {rollout.updated}/{rollout.desired} updated, "
                               f"{rollout.ready} ready"))
    elif rollout.exists:
        conds.append(condition(PROGRESSING, False, "RolloutComplete",
                               f"all {rollout.desired} replicas run version "
                               f"{resolved.version if resolved else '?'}"))
    else:
        conds.append(condition(PROGRESSING, False, "NotDeployed", "nothing to roll out yet"))

    if problem is not None:
        conds.append(condition(DEGRADED, True, problem.reason, problem.message))
    elif rollout.failure:
        conds.append(condition(DEGRADED, True, "RolloutFailed", rollout.failure))
    else:
        conds.append(condition(DEGRADED, False, "AsExpected", "no problem detected"))

    if problem is not None:
        ready = condition(READY, False, problem.reason, conds[0]["message"])
    elif rollout.failure:
        ready = condition(READY, False, "RolloutFailed", rollout.failure)
    elif not rollout.exists:
        ready = condition(READY, False, "NotDeployed", "the serving Deployment is being created")
    elif not rollout.complete:
        ready = condition(READY, False, "RollingOut", conds[2]["message"])
    else:
        version = resolved.version if resolved else "?"
        ready = condition(READY, True, "Serving",
                          f"serving version {version} with {rollout.ready}/{rollout.desired} replicas ready")
    return [ready, *conds]


def invalid_spec_conditions(message: str) -> list[dict[str, Any]]:
    return [
        condition(READY, False, "InvalidSpec", message),
        condition(MODEL_RESOLVED, False, "InvalidSpec", message),
        condition(DEGRADED, True, "InvalidSpec", message),
    ]
