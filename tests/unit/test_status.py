"""Condition logic, as data: what a person reads in `kubectl describe mdep`."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot.observe import Problem, Rollout
from modelpilot.registry import ResolvedModel
from modelpilot.status import compute_conditions, merge_conditions

V7 = ResolvedModel(name="m", version="7")


def deployment(replicas: int = 2, ready: int = 2, updated: int = 2, available: int = 2, total: int | None = None,
               observed: bool = True, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": 3}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 3 if observed else 2, "replicas": replicas if total is None else total,
                       "readyReplicas": ready, "updatedReplicas": updated, "availableReplicas": available,
                       "conditions": conditions or []}}


def by_type(conds: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


@pytest.mark.parametrize(
    ("resolved", "problem", "dep", "ready", "progressing", "degraded"),
    [
        pytest.param(V7, None, deployment(), ("True", "Serving"), ("False", "RolloutComplete"),
                     ("False", "AsExpected"), id="converged"),
        pytest.param(V7, None, None, ("False", "NotDeployed"), ("False", "NotDeployed"), ("False", "AsExpected"),
                     id="not-yet-created"),
        pytest.param(V7, None, deployment(updated=1, total=3, ready=2), ("False", "RollingOut"), ("True", "RollingOut"),
                     ("False", "AsExpected"), id="rolling"),
        pytest.param(V7, None, deployment(observed=False), ("False", "RollingOut"), ("True", "RollingOut"),
                     ("False", "AsExpected"), id="controller-not-caught-up"),
        pytest.param(V7, Problem("RegistryUnreachable", "down"), deployment(), ("False", "RegistryUnreachable"),
                     ("False", "RolloutComplete"), ("True", "RegistryUnreachable"), id="registry-down-still-serving"),
        pytest.param(None, Problem("ModelNotFound", "no such alias"), None, ("False", "ModelNotFound"),
                     ("False", "NotDeployed"), ("True", "ModelNotFound"), id="unknown-model"),
        pytest.param(V7, None, deployment(ready=0, available=0, conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "stuck"}]),
            ("False", "RolloutFailed"), ("False", "RolloutFailed"), ("True", "RolloutFailed"), id="deadline"),
        pytest.param(V7, None, deployment(replicas=0, ready=0, updated=0, available=0), ("True", "Serving"),
                     ("False", "RolloutComplete"), ("False", "AsExpected"), id="scaled-to-zero"),
    ],
)
def test_conditions(resolved: ResolvedModel | None, problem: Problem | None, dep: dict[str, Any] | None,
                    ready: tuple[str, str], progressing: tuple[str, str], degraded: tuple[str, str]) -> None:
    conds = by_type(compute_conditions(resolved, problem, Rollout.from_deployment(dep)))
    assert conds["Ready"] == ready
    assert conds["Progressing"] == progressing
    assert conds["Degraded"] == degraded
    assert conds["ModelResolved"][0] == ("False" if problem else "True")


def test_registry_problem_message_says_what_keeps_serving() -> None:
    conds = compute_conditions(V7, Problem("RegistryUnreachable", "registry at http://x is unreachable"),
                               Rollout.from_deployment(deployment()))
    resolved = next(c for c in conds if c["type"] == "ModelResolved")
    assert "unreachable" in resolved["message"] and "version 7" in resolved["message"]


def test_transition_time_moves_only_on_status_change() -> None:
    first = merge_conditions(None, [{"type": "Ready", "status": "False", "reason": "A", "message": ""}], "t1", 1)
    same = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "B", "message": ""}], "t2", 2)
    flipped = merge_conditions(same, [{"type": "Ready", "status": "True", "reason": "C", "message": ""}], "t3", 2)
    assert [c["lastTransitionTime"] for c in (*first, *same, *flipped)] == ["t1", "t1", "t3"]
    assert same[0]["observedGeneration"] == 2
