"""The Argo CD health check, run in a real Lua interpreter (lupa embeds Lua 5.4) against status fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import REPO

SCRIPT = (REPO / "charts" / "modelpilot" / "argocd" / "health.lua").read_text()


def health(obj: dict[str, Any]) -> dict[str, str]:
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def mdep(generation: int = 2, status: dict[str, Any] | None = None, replicas: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "m", "generation": generation}, "spec": {"replicas": replicas}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("obj", "expected", "says"),
    [
        pytest.param(mdep(), "Progressing", "Waiting", id="no-status"),
        pytest.param(mdep(status={"observedGeneration": 1, "conditions": [cond("Ready", "True")]}), "Progressing",
                     "generation 2", id="stale-generation"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Serving", "ok")]}),
                     "Healthy", "ok", id="ready"),
        pytest.param(mdep(replicas=0, status={"observedGeneration": 2, "conditions": [cond("Ready", "True")]}),
                     "Suspended", "zero", id="scaled-to-zero"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [
            cond("Ready", "False", "RegistryUnreachable"), cond("Degraded", "True", "RegistryUnreachable", "down")]}),
            "Degraded", "RegistryUnreachable: down", id="registry-down"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [
            cond("Ready", "False", "InvalidSpec"), cond("Degraded", "True", "InvalidSpec", "spec.model.uri: bad")]}),
            "Degraded", "spec.model.uri", id="invalid-spec"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [
            cond("Ready", "False", "RollingOut"), cond("Progressing", "True", "RollingOut", "rolling out 8"),
            cond("Degraded", "False")]}), "Progressing", "rolling out 8", id="rolling-out"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [cond("Ready", "False", "NotDeployed", "x")]}),
                     "Progressing", "NotDeployed", id="not-deployed"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [
            cond("Ready", "True", "Serving"), cond("Progressing", "True", "CanaryRollout", "canary 8: step 1/2"),
            cond("Degraded", "False")]}), "Progressing", "step 1/2", id="canary-walking-its-steps"),
        pytest.param(mdep(status={"observedGeneration": 2, "conditions": [
            cond("Ready", "True", "Serving"), cond("Progressing", "False", "RolloutComplete"),
            cond("Degraded", "True", "RolledBack", "version 8 was rolled back")]}), "Degraded", "RolledBack: version 8",
            id="canary-rolled-back"),
    ],
)
def test_health(obj: dict[str, Any], expected: str, says: str) -> None:
    result = health(obj)
    assert result["status"] == expected
    assert says in result["message"]


def test_health_of_what_the_operator_really_writes() -> None:
    """Fixtures built by the operator's own condition logic, not by hand."""
    from modelpilot.observe import Problem, Rollout
    from modelpilot.registry import ResolvedModel
    from modelpilot.status import compute_conditions

    dep = {"metadata": {"generation": 1}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                      "availableReplicas": 2}}
    rollout = Rollout.from_deployment(dep)
    ok = compute_conditions(ResolvedModel("m", "3"), None, rollout)
    down = compute_conditions(ResolvedModel("m", "3"), Problem("RegistryUnreachable", "x"), rollout)
    assert health(mdep(status={"observedGeneration": 2, "conditions": ok}))["status"] == "Healthy"
    assert health(mdep(status={"observedGeneration": 2, "conditions": down}))["status"] == "Degraded"
