"""The Argo CD health check, run in real Lua interpreters against status fixtures and real operator statuses.

Argo CD runs health checks in gopher-lua, which implements Lua 5.1; lupa embeds real Lua 5.1 (and
5.4, to catch a script that relies on either's quirks), so every case runs under both.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import REPO

SCRIPT = (REPO / "charts" / "modelpilot" / "argocd" / "health.lua").read_text()


LUAS = ("lua51", "lua54")


@pytest.fixture(params=LUAS)
def lua_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def health(obj: dict[str, Any], version: str = "lua51") -> dict[str, str]:
    import importlib

    runtime = importlib.import_module(f"lupa.{version}")
    lua = runtime.LuaRuntime(unpack_returned_tuples=True)
    assert str(lua.eval("_VERSION")) == {"lua51": "Lua 5.1", "lua54": "Lua 5.4"}[version]

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
def test_health(obj: dict[str, Any], expected: str, says: str, lua_version: str) -> None:
    result = health(obj, lua_version)
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
    for version in LUAS:
        assert health(mdep(status={"observedGeneration": 2, "conditions": ok}), version)["status"] == "Healthy"
        assert health(mdep(status={"observedGeneration": 2, "conditions": down}), version)["status"] == "Degraded"


def test_health_of_a_canary_walked_by_the_real_reconcile(lua_version: str) -> None:
    """Statuses written by the operator's own pipeline (in-memory API, fake clocks): a progressive rollout is
    Progressing, a promoted one Healthy, an aborted (rolled back) one Degraded while stable still serves."""
    from tests.fakes.harness import NS, Harness
    from tests.fakes.kube import FakeKube
    from tests.fakes.mlflow import FakeMlflow

    registry = FakeMlflow()
    registry.set_alias("fraud", "champion", "1")
    world = Harness(FakeKube(), registry)
    try:
        world.apply(refreshInterval="5s", replicas=2, traffic={"router": "replicas"},
                    canary={"steps": [{"weight": 50, "pause": "1m"}]})
        world.converge()

        def argo() -> str:
            return health(world.kube.mdep(NS, "m"), lua_version)["status"]

        assert argo() == "Healthy"
        registry.set_alias("fraud", "champion", "2")
        world.advance(6)
        world.converge()
        assert world.status()["canary"]["phase"] == "Running" and argo() == "Progressing"
        world.advance(61)
        for _ in range(3):
            world.converge()
        assert world.status()["model"]["version"] == "2" and argo() == "Healthy"

        registry.set_alias("fraud", "champion", "3")
        world.advance(6)
        world.converge()
        assert argo() == "Progressing"
        world.kube.objects[("modelpilot.dev/v1alpha1", "ModelDeployment", NS, "m")]["metadata"]["annotations"] = {
            "modelpilot.dev/abort": "3"}
        world.converge()
        status = world.status()
        assert status["lastRollout"]["result"] == "RolledBack" and status["model"]["version"] == "2"
        assert argo() == "Degraded"
    finally:
        world.stop()
        registry.close()
