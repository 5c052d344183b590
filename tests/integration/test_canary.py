"""Canary splits and progressive rollouts, on the real control plane with the official Gateway API CRDs.

Promotion and rollback are decided by real metrics: each canary version also runs as a real
`modelpilot-serve` process (kwok pods execute nothing), a real Prometheus (Debian's) scrapes it with
the `namespace` label a PodMonitor would add, the test sends it requests, and the operator's default
queries judge it. A healthy RandomForest version is promoted; a version that fails for half of its
inputs, or answers slowly, is rolled back.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.controlplane import ControlPlane
from hack.proc import free_port, wait_for
from hack.sample_model import register_faulty
from hack.services import MlflowServer, PrometheusServer
from modelpilot.kube import Kube
from modelpilot.traffic import effective_weight, split_replicas
from tests.helpers import (
    MDEP,
    REPO,
    Operator,
    RandomTraffic,
    Registry,
    Server,
    apply,
    condition,
    events_for,
    get_mdep,
    mdep_manifest,
    reapply,
    wait_event,
    wait_ready,
)

pytestmark = pytest.mark.cluster

FEATURES = 4  # tests.helpers.Registry.register trains on 4 columns
PARENT = {"name": "public", "namespace": "infra"}
GATEWAY = {"router": "gatewayAPI", "gatewayAPI": {"parentRefs": [PARENT]}}


class ScoringServer:
    """A real scoring server for one registered version, scraped by Prometheus, with a request loop."""

    def __init__(self, tracking_uri: str, model: str, version: str, namespace: str, prometheus: PrometheusServer,
                 log: Path, *flags: str) -> None:
        port = free_port()
        self.server = Server(
            [sys.executable, "-m", "modelpilot_serve.cli", "--model-uri", f"models:/{model}/{version}",
             "--host", "127.0.0.1", "--port", str(port), "--health-port", str(free_port()),
             "--cache-dir", str(log.parent / f"cache-{port}"), *flags],
            port, log, env={"MLFLOW_TRACKING_URI": tracking_uri}).wait("/v2/health/ready")
        self.url = self.server.url
        self.target = f"{namespace}-{model}-{version}"
        self.prometheus = prometheus
        self.traffic = RandomTraffic(self.url, FEATURES)
        prometheus.add_target(self.target, f"127.0.0.1:{port}", {"namespace": namespace})

    @property
    def codes(self) -> Counter[int]:
        return self.traffic.codes

    def start_load(self, per_second: float = 25) -> None:
        """Requests with random rows, as production traffic would look, until stop()."""
        self.traffic.per_second = per_second
        self.traffic.start()

    def stop(self) -> None:
        self.traffic.stop()
        self.prometheus.remove_target(self.target)
        self.server.stop()


@pytest.fixture
def serve(mlflow_server: MlflowServer, prometheus: PrometheusServer, namespace: str,
          tmp_path: Path) -> Iterator[Callable[..., ScoringServer]]:
    servers: list[ScoringServer] = []

    def start(model: str, version: str, *flags: str) -> ScoringServer:
        server = ScoringServer(mlflow_server.url, model, version, namespace, prometheus,
                               tmp_path / f"serve-{model}-{version}.log", *flags)
        servers.append(server)
        server.start_load()
        return server

    yield start
    for server in servers:
        server.stop()


# -- reading what the operator wrote ------------------------------------------------------------------
def canary_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict((get_mdep(kube, namespace, name).get("status") or {}).get("canary") or {})


def route_weights(kube: Kube, namespace: str, name: str) -> dict[str, int]:
    route = kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, name)
    assert route is not None, "the HTTPRoute exists"
    assert [(r["name"], r.get("namespace")) for r in route["spec"]["parentRefs"]] == [("public", "infra")]
    return {b["name"]: b.get("weight", 1) for b in route["spec"]["rules"][0]["backendRefs"]}


def replicas(kube: Kube, namespace: str, name: str) -> tuple[int | None, int | None]:
    stable = kube.get("apps/v1", "Deployment", namespace, name)
    canary = kube.get("apps/v1", "Deployment", namespace, f"{name}-canary")
    return (stable["spec"]["replicas"] if stable else None, canary["spec"]["replicas"] if canary else None)


def serving_version(kube: Kube, namespace: str, name: str, track: str = "") -> str | None:
    dep = kube.get("apps/v1", "Deployment", namespace, f"{name}-{track}" if track else name)
    return dep["spec"]["template"]["metadata"]["labels"]["modelpilot.dev/model-version"] if dep else None


def wait_canary(kube: Kube, namespace: str, name: str, what: str, check: Callable[[dict[str, Any]], bool],
                operator: Operator, timeout: float = 90) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        obj = get_mdep(kube, namespace, name)
        return obj if check(obj.get("status") or {}) else None

    try:
        return dict(wait_for(seen, timeout, what))
    except TimeoutError as exc:
        status = (kube.get(*MDEP, namespace, name) or {}).get("status")
        raise AssertionError(f"{exc}\nstatus: {json.dumps(status, indent=1)}\n{operator.logs(80)}") from None


def reasons(kube: Kube, namespace: str, name: str) -> list[str]:
    return [e["reason"] for e in sorted(events_for(kube, namespace, name),
                                        key=lambda e: e.get("lastTimestamp") or "")]


def analysis(prometheus: PrometheusServer, **limits: Any) -> dict[str, Any]:
    return {"prometheusUrl": prometheus.url, "minRequests": 5, **limits}


# -- progressive rollout: promote ---------------------------------------------------------------------
def test_progressive_rollout_walks_httproute_weights_and_promotes_a_healthy_version(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, serve: Callable[[str, str], ScoringServer]) -> None:
    v1 = registry.register(model_name, alias="champion", seed=0)
    steps = [{"weight": 20, "pause": "5s"}, {"weight": 60, "pause": "5s"}]
    apply(control_plane, mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", replicas=2, traffic=GATEWAY,
        canary={"steps": steps, "analysis": analysis(prometheus, maxErrorRate=0.05, maxP99LatencyMs=2000)}))
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 100}

    v2 = registry.register(model_name, seed=1)
    canary_server = serve(model_name, v2)
    promotions = operator.metric("modelpilot_promotions_total")
    passes = operator.metric("modelpilot_canary_analyses_total", outcome="pass")
    registry.set_alias(model_name, "champion", v2)

    # Every status seen while the canary runs is kept and checked after the poll (a failed assert inside
    # the poll would only be retried, never reported); the route is applied before the status reporting it.
    running: list[dict[str, Any]] = []
    seen_steps: dict[int, dict[str, int]] = {}

    def promoted(status: dict[str, Any]) -> bool:
        canary = status.get("canary") or {}
        if canary:
            running.append(status)
        if canary.get("phase") == "Running" and canary.get("step") not in seen_steps:
            seen_steps[canary["step"]] = route_weights(kube, namespace, "fraud")
        return (status.get("lastRollout") or {}).get("result") == "Promoted" and not canary

    obj = wait_canary(kube, namespace, "fraud", "the canary to be promoted", promoted, operator, timeout=120)
    assert seen_steps == {1: {"fraud-stable": 80, "fraud-canary": 20}, 2: {"fraud-stable": 40, "fraud-canary": 60}}
    walking = [s for s in running if s["canary"]["phase"] == "Running"]
    assert {s["canary"]["step"] for s in walking} == {1, 2}
    for seen in walking:
        canary = seen["canary"]
        assert canary["weight"] == steps[canary["step"] - 1]["weight"], canary
        assert canary["router"] == "gatewayAPI", canary
        assert condition({"status": seen}, "Progressing")["reason"] == "CanaryRollout", seen
    for seen in running:
        if seen["canary"]["phase"] != "Promoting":
            assert seen["model"]["version"] == v1, f"stable must stay on v1 while the canary runs: {seen}"
    status = obj["status"]
    assert status["model"]["version"] == v2 and status["lastRollout"]["version"] == v2
    assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 100}
    assert serving_version(kube, namespace, "fraud") == v2
    assert kube.get("apps/v1", "Deployment", namespace, "fraud-canary") is None
    assert kube.get("v1", "Service", namespace, "fraud-canary") is None
    wait_ready(kube, namespace, "fraud", operator=operator, version=v2)
    assert (kube.get(*MDEP, namespace, "fraud") or {})["status"]["knownGoodVersion"] == v2
    wait_event(kube, namespace, "fraud", "Promoted")
    events = reasons(kube, namespace, "fraud")
    assert events.count("CanaryStep") == 2 and "Promoting" in events and "Promoted" in events, events
    step_events = [e["message"] for e in events_for(kube, namespace, "fraud") if e["reason"] == "CanaryStep"]
    assert any("step 1 passed: errorRate 0" in m for m in step_events), step_events
    assert canary_server.codes[200] > 20 and set(canary_server.codes) == {200}
    # the operator's own metrics say so too
    assert operator.metric("modelpilot_promotions_total") == promotions + 1
    assert operator.metric("modelpilot_canary_analyses_total", outcome="pass") >= passes + 2


# -- progressive rollout: roll back on real metrics ---------------------------------------------------
@pytest.mark.parametrize(("router", "fault", "limits", "failed_metric"), [
    pytest.param("replicas", {"fail_share": 0.5}, {"maxErrorRate": 0.05}, "errorRate", id="errors-replica-ratio"),
    pytest.param("gatewayAPI", {"delay_ms": 250}, {"maxP99LatencyMs": 100}, "p99LatencyMs", id="slow-httproute"),
])
def test_a_bad_version_is_rolled_back_and_not_retried_until_the_alias_moves(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, mlflow_server: MlflowServer,
        serve: Callable[[str, str], ScoringServer], router: str, fault: dict[str, float], limits: dict[str, float],
        failed_metric: str) -> None:
    v1 = registry.register(model_name, alias="champion", seed=0)
    traffic = GATEWAY if router == "gatewayAPI" else {"router": "replicas"}
    manifest = mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", replicas=4, traffic=traffic,
        canary={"steps": [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}],
                "analysis": analysis(prometheus, **limits)})
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)

    bad = register_faulty(mlflow_server.url, model_name, features=FEATURES, **fault)
    server = serve(model_name, bad)
    rollbacks = operator.metric("modelpilot_rollbacks_total")
    failures = operator.metric("modelpilot_canary_analyses_total", outcome="fail")
    registry.set_alias(model_name, "champion", bad)

    def at_step_one(status: dict[str, Any]) -> bool:
        return (status.get("canary") or {}).get("phase") == "Running"

    wait_canary(kube, namespace, "fraud", "the bad version to run as canary", at_step_one, operator)
    if router == "replicas":
        assert replicas(kube, namespace, "fraud") == (3, 1)
        assert canary_status(kube, namespace, "fraud")["weight"] == 25
        assert kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "fraud") is None
    else:
        assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 75, "fraud-canary": 25}
        assert replicas(kube, namespace, "fraud") == (4, 2)  # the canary is sized for its largest step

    obj = wait_canary(kube, namespace, "fraud", "the rollback",
                      lambda s: (s.get("lastRollout") or {}).get("result") == "RolledBack", operator, timeout=90)
    status = obj["status"]
    assert status["rejected"]["version"] == bad and failed_metric in status["rejected"]["reason"], status
    assert "canary" not in status
    assert condition(obj, "Degraded")["reason"] == "RolledBack"
    wait_for(lambda: replicas(kube, namespace, "fraud") == (4, None), 30, "canary removed, stable back to 4")
    # stable keeps serving v1 (Ready may blink while the stable track scales back from 3 to 4 pods)
    obj = wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    assert condition(obj, "Degraded")["reason"] == "RolledBack", "Ready and Degraded: serving, not the alias"
    assert serving_version(kube, namespace, "fraud") == v1
    if router == "gatewayAPI":
        assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 100}
    rolled = [e for e in wait_event(kube, namespace, "fraud", "RolledBack") if e["reason"] == "RolledBack"]
    assert operator.metric("modelpilot_rollbacks_total") == rollbacks + 1
    assert operator.metric("modelpilot_canary_analyses_total", outcome="fail") == failures + 1
    assert len(rolled) == 1 and rolled[0]["type"] == "Warning" and failed_metric in rolled[0]["message"]
    if failed_metric == "errorRate":
        assert server.codes[500] > 0, "the faulty version really failed requests"

    # The alias still points at the rejected version: several refreshes later nothing was retried.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert canary_status(kube, namespace, "fraud") == {}, "a rejected version is not retried"
        time.sleep(0.5)

    # The alias moves on: the new version gets its own rollout (and the rejection is lifted).
    v3 = registry.register(model_name, alias="champion", seed=2)
    obj = wait_canary(kube, namespace, "fraud", "the next version to start as canary",
                      lambda s: (s.get("canary") or {}).get("version") == v3, operator)
    assert "rejected" not in obj["status"]
    assert condition(obj, "Degraded")["status"] == "False"

    # Deleting the canary section sends everything to stable, which now follows the alias directly.
    del manifest["spec"]["canary"]
    reapply(control_plane, manifest)
    wait_ready(kube, namespace, "fraud", operator=operator, version=v3)
    wait_for(lambda: replicas(kube, namespace, "fraud") == (4, None), 30, "the canary Deployment to go")
    assert canary_status(kube, namespace, "fraud") == {}
    wait_event(kube, namespace, "fraud", "CanaryRemoved")


# -- progressive rollout: roll back a canary whose predictions differ from stable's -----------------
def test_a_canary_whose_predictions_drift_from_stables_is_rolled_back(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, serve: Callable[..., ScoringServer]) -> None:
    """Both versions' real servers count their predictions into the bins of stable's reference profile (the
    canary's told stable's version, as the operator tells canary pods); the real Prometheus computes the PSI
    between them with the default query, and the real operator rolls the canary back on it."""
    import mlflow
    import numpy as np
    import pandas as pd

    from modelpilot.monitoring import log_reference

    v1 = registry.register(model_name, alias="champion", seed=0)
    columns = [f"f{i}" for i in range(FEATURES)]
    training = pd.DataFrame(np.random.default_rng(0).normal(size=(2000, FEATURES)), columns=columns)
    mlflow.set_tracking_uri(registry.url)
    predictions = mlflow.pyfunc.load_model(f"models:/{model_name}/{v1}").predict(training)
    log_reference(training, registry.client().get_model_version(model_name, v1).run_id, predictions=predictions)
    serve(model_name, v1)  # stable's real traffic, counted into its own bins

    class AlwaysOne(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        # defined in the test function, so cloudpickle stores it by value: the server needs nothing of ours
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return np.ones(len(model_input), dtype=int)  # every answer the same: a different distribution

    manifest = mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", replicas=4,
        traffic={"router": "replicas"}, canary={"steps": [{"weight": 25, "pause": "5s"}],
                                                "analysis": analysis(prometheus, maxPredictionDrift=0.2)})
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=AlwaysOne(), registered_model_name=model_name,
                                       pip_requirements=["mlflow", "numpy", "pandas"])
    bad = str(info.registered_model_version)
    serve(model_name, bad, "--drift-baseline", v1)
    registry.set_alias(model_name, "champion", bad)
    canary = wait_canary(kube, namespace, "fraud", "the canary Deployment",
                         lambda s: (s.get("canary") or {}).get("version") == bad, operator)
    assert canary
    env = kube.get("apps/v1", "Deployment", namespace, "fraud-canary")["spec"]["template"]["spec"][  # type: ignore[index]
        "containers"][0]["env"]
    assert {"name": "MODELPILOT_DRIFT_BASELINE", "value": v1} in env, "its pods count into stable's bins"
    obj = wait_canary(kube, namespace, "fraud", "the rollback",
                      lambda s: (s.get("lastRollout") or {}).get("result") == "RolledBack", operator, timeout=120)
    reason = obj["status"]["rejected"]["reason"]
    assert obj["status"]["rejected"]["version"] == bad and "predictionDrift" in reason, obj["status"]


# -- safety: restart, missing data, manual promote/abort --------------------------------------------
def test_operator_restart_mid_rollout_resumes_at_the_same_step_and_manual_promote(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    v1 = registry.register(model_name, alias="champion", seed=0)
    apply(control_plane, mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", traffic=GATEWAY,
        canary={"steps": [{"weight": 10, "pause": "20s"}, {"weight": 50}]}))
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    v2 = registry.register(model_name, alias="champion", seed=1)

    obj = wait_canary(kube, namespace, "fraud", "step 1", lambda s: (s.get("canary") or {}).get("phase") == "Running",
                      operator)
    before = obj["status"]["canary"]
    assert before["step"] == 1 and route_weights(kube, namespace, "fraud") == {"fraud-stable": 90, "fraud-canary": 10}
    offset = operator.log_size()
    operator.restart()
    # The restarted operator picks up the rollout where it was: same step, same step clock, same weights.
    # The check is about what it did NOT change, so it is made after each of two reconciles: the one its
    # initial listings trigger (kopf releases them together, so they make one), and one more that an
    # unrelated annotation triggers, both well inside the step's 20 s pause.
    for looks, poke in ((1, None), (2, "modelpilot-test/poke=1")):
        if poke:
            control_plane.kubectl("annotate", "mdep", "fraud", "-n", namespace, poke)
        operator.wait_reconciles(namespace, "fraud", looks, offset, timeout=15)
        after = canary_status(kube, namespace, "fraud")
        assert (after["step"], after["stepStartedAt"], after["phase"]) == (1, before["stepStartedAt"], "Running")
        assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 90, "fraud-canary": 10}

    # Step 2 has no pause: it holds until a person promotes this exact version.
    wait_canary(kube, namespace, "fraud", "step 2 waiting for promotion",
                lambda s: (s.get("canary") or {}).get("phase") == "WaitingForPromotion", operator)
    assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 50, "fraud-canary": 50}
    control_plane.kubectl("annotate", "mdep", "fraud", "-n", namespace, f"modelpilot.dev/promote={v2}")
    obj = wait_canary(kube, namespace, "fraud", "promotion",
                      lambda s: (s.get("lastRollout") or {}).get("result") == "Promoted", operator)
    assert obj["status"]["model"]["version"] == v2
    assert route_weights(kube, namespace, "fraud") == {"fraud-stable": 100}
    wait_event(kube, namespace, "fraud", "PromotionRequested")


def test_missing_metrics_never_promote_and_abort_rolls_back(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    v1 = registry.register(model_name, alias="champion", seed=0)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: Prometheus is "down"
    apply(control_plane, mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", traffic={"router": "replicas"},
        replicas=2, canary={"steps": [{"weight": 50, "pause": "2s"}],
                            "analysis": {"prometheusUrl": nowhere, "maxErrorRate": 0.01}}))
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    v2 = registry.register(model_name, alias="champion", seed=1)

    obj = wait_canary(kube, namespace, "fraud", "an inconclusive analysis",
                      lambda s: (s.get("canary") or {}).get("phase") == "Inconclusive", operator)
    assert "cannot be reached" in obj["status"]["canary"]["message"]
    events = wait_event(kube, namespace, "fraud", "AnalysisInconclusive", "Warning")
    assert any(nowhere in e["message"] for e in events if e["reason"] == "AnalysisInconclusive")
    # two more analyses (retried every 15 s), each inconclusive in the operator's log: still not promoted
    offset = operator.log_size()
    wait_for(lambda: operator.logs_since(offset).count(f"Analysis of {namespace}/fraud version {v2}: inconclusive")
             >= 2, 60, f"two more analyses\n{operator.logs()}")
    obj = get_mdep(kube, namespace, "fraud")
    assert obj["status"]["model"]["version"] == v1 and obj["status"]["canary"]["version"] == v2
    assert replicas(kube, namespace, "fraud") == (1, 1)

    control_plane.kubectl("annotate", "mdep", "fraud", "-n", namespace, f"modelpilot.dev/abort={v2}")
    obj = wait_canary(kube, namespace, "fraud", "the abort",
                      lambda s: (s.get("rejected") or {}).get("version") == v2, operator)
    assert "annotation" in obj["status"]["rejected"]["reason"]
    wait_for(lambda: replicas(kube, namespace, "fraud") == (2, None), 30, "the canary to be removed")
    assert serving_version(kube, namespace, "fraud") == v1


def test_a_canary_without_traffic_is_never_promoted_on_an_empty_answer(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer) -> None:
    """Real Prometheus, up and answering, but no series for the canary (nothing serves it): each analysis
    through the real query path is inconclusive, and the rollout waits."""
    v1 = registry.register(model_name, alias="champion", seed=0)
    apply(control_plane, mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", traffic={"router": "replicas"},
        replicas=2, canary={"steps": [{"weight": 50, "pause": "2s"}],
                            "analysis": analysis(prometheus, maxErrorRate=0.5)}))
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    offset = operator.log_size()
    v2 = registry.register(model_name, alias="champion", seed=1)
    wait_for(lambda: operator.logs_since(offset).count(f"Analysis of {namespace}/fraud version {v2}: inconclusive")
             >= 2, 60, f"two analyses\n{operator.logs()}")
    obj = get_mdep(kube, namespace, "fraud")
    canary = obj["status"]["canary"]
    assert canary["phase"] == "Inconclusive" and "no canary requests" in canary["message"], canary
    assert obj["status"]["model"]["version"] == v1, "stable never moved on an empty answer"
    assert not obj["status"].get("lastRollout")


def test_registry_outage_pauses_a_rollout_and_it_resumes(
        control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str, model_name: str,
        own_mlflow: MlflowServer) -> None:
    reg = Registry(own_mlflow.url)
    v1 = reg.register(model_name, alias="champion", seed=0)
    apply(control_plane, mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", refreshInterval="2s", traffic=GATEWAY,
        registry={"trackingUri": own_mlflow.url},
        canary={"steps": [{"weight": 30, "pause": "4s"}, {"weight": 60, "pause": "4s"}]}))
    wait_ready(kube, namespace, "fraud", operator=operator, version=v1)
    v2 = reg.register(model_name, alias="champion", seed=1)
    wait_canary(kube, namespace, "fraud", "step 1", lambda s: (s.get("canary") or {}).get("step") == 1
                and s["canary"].get("phase") == "Running", operator)
    own_mlflow.stop()
    obj = wait_canary(kube, namespace, "fraud", "the rollout to pause",
                      lambda s: (s.get("canary") or {}).get("phase") == "Paused", operator)
    assert obj["status"]["canary"]["step"] == 1
    assert condition(obj, "ModelResolved")["reason"] == "RegistryUnreachable"
    weights = route_weights(kube, namespace, "fraud")
    offset = operator.log_size()
    time.sleep(5)  # longer than the step's pause (4 s) ...
    operator.wait_reconciles(namespace, "fraud", 2, offset)  # ... and the operator looked: nothing moves
    assert canary_status(kube, namespace, "fraud")["step"] == 1
    assert route_weights(kube, namespace, "fraud") == weights == {"fraud-stable": 70, "fraud-canary": 30}
    own_mlflow.start()
    obj = wait_canary(kube, namespace, "fraud", "the resumed rollout to finish",
                      lambda s: (s.get("lastRollout") or {}).get("result") == "Promoted", operator, timeout=90)
    assert obj["status"]["model"]["version"] == v2


# -- manual canary and shadow traffic -----------------------------------------------------------------
def test_manual_canary_by_replica_ratio_reports_the_effective_weight(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    v1 = registry.register(model_name, alias="champion", seed=0)
    v2 = registry.register(model_name, alias="challenger", seed=1)
    manifest = mdep_manifest("fraud", namespace, f"models:/{model_name}@champion", replicas=3,
                             traffic={"router": "replicas"},
                             canary={"model": {"uri": f"models:/{model_name}@challenger"}, "weight": 50})
    apply(control_plane, manifest)
    obj = wait_canary(kube, namespace, "fraud", "the manual canary",
                      lambda s: (s.get("canary") or {}).get("phase") == "Manual", operator)
    stable, canary = split_replicas(3, 50)
    assert replicas(kube, namespace, "fraud") == (stable, canary) == (1, 2)
    status = obj["status"]["canary"]
    assert (status["version"], status["desiredWeight"], status["weight"]) == (v2, 50, effective_weight(1, 2)) == (
        v2, 50, 67)
    assert serving_version(kube, namespace, "fraud") == v1
    assert serving_version(kube, namespace, "fraud", "canary") == v2
    svc = kube.get("v1", "Service", namespace, "fraud")
    assert svc is not None and svc["spec"]["selector"] == {"modelpilot.dev/deployment": "fraud"}, "both tracks"
    printed = control_plane.kubectl("get", "mdep", "fraud", "-n", namespace).stdout
    assert "CANARY" in printed and " 67 " in printed, printed

    del manifest["spec"]["canary"]
    reapply(control_plane, manifest)
    wait_for(lambda: replicas(kube, namespace, "fraud") == (3, None), 30, "all traffic back to stable")
    assert canary_status(kube, namespace, "fraud") == {}


def test_manual_canary_and_shadow_traffic_through_the_gateway_api(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion", seed=0)
    v2 = registry.register(model_name, alias="challenger", seed=1)
    manifest = mdep_manifest("fraud", namespace, f"models:/{model_name}@champion", traffic=GATEWAY,
                             canary={"model": {"uri": f"models:/{model_name}@challenger"}, "weight": 30,
                                     "shadow": True})
    apply(control_plane, manifest)
    obj = wait_canary(kube, namespace, "fraud", "the shadow canary",
                      lambda s: (s.get("canary") or {}).get("phase") == "Manual", operator)
    assert (obj["status"]["canary"]["mirrorPercent"], obj["status"]["canary"]["weight"]) == (30, 0)
    route = kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "fraud")
    assert route is not None
    rule = route["spec"]["rules"][0]
    assert [b["name"] for b in rule["backendRefs"]] == ["fraud-stable"], "responses come from stable only"
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"group": "", "kind": "Service", "name": "fraud-canary", "port": 80}, "percent": 30}}]
    canary_svc = kube.get("v1", "Service", namespace, "fraud-canary")
    assert canary_svc is not None and canary_svc["spec"]["selector"]["modelpilot.dev/track"] == "canary"

    manifest["spec"]["canary"]["shadow"] = False
    reapply(control_plane, manifest)
    wait_for(lambda: route_weights(kube, namespace, "fraud") == {"fraud-stable": 70, "fraud-canary": 30}, 30,
             "a 70/30 split")
    assert "filters" not in (kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "fraud") or {})[
        "spec"]["rules"][0]
    assert serving_version(kube, namespace, "fraud", "canary") == v2

    # Switching the router to replicas removes the operator's HTTPRoute and per-track Services.
    manifest["spec"]["traffic"] = {"router": "replicas"}
    reapply(control_plane, manifest)
    wait_for(lambda: kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "fraud") is None, 30,
             "the HTTPRoute to be removed")
    wait_for(lambda: kube.get("v1", "Service", namespace, "fraud-stable") is None, 30, "track Services removed")
    assert kube.get("v1", "Service", namespace, "fraud") is not None


def test_gateway_api_router_without_parent_refs_is_refused(
        control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str, model_name: str) -> None:
    out = apply(control_plane, mdep_manifest("fraud", namespace, f"models:/{model_name}@champion",
                                             canary={"weight": 10}))
    assert out.returncode != 0 and "spec.canary" in out.stderr, out.stderr
    apply(control_plane, mdep_manifest("g", namespace, f"models:/{model_name}@champion",
                                       traffic={"router": "gatewayAPI"}))
    obj = wait_canary(kube, namespace, "g", "InvalidSpec",
                      lambda s: condition({"status": s}, "Ready").get("reason") == "InvalidSpec", operator)
    assert "parentRefs" in condition(obj, "Ready")["message"]


# -- latency thresholds of the served version, from the same real Prometheus ---------------------------------
def test_the_served_versions_latency_and_errors_are_checked_against_its_thresholds(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, serve: Callable[[str, str], ScoringServer]) -> None:
    version = registry.register(model_name, alias="champion", seed=0)
    serve(model_name, version)  # real requests, scraped by the real Prometheus
    manifest = mdep_manifest("m", namespace, f"models:/{model_name}@champion", monitoring={"latency": {
        "p99Ms": 60000, "errorRate": 0.5, "window": "30s", "prometheusUrl": prometheus.url}})
    apply(control_plane, manifest)

    def judged(status: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            found = condition(get_mdep(kube, namespace, "m"), "LatencyWithinThreshold")
            return found if found.get("status") == status else None
        return check

    within = wait_for(judged("True"), 120, f"LatencyWithinThreshold=True\n{operator.logs(40)}")
    assert within["reason"] == "WithinThreshold" and "requests in 30s" in within["message"], within
    # the same traffic against a p99 no server meets (one microsecond): checked again at once (new thresholds)
    manifest["spec"]["monitoring"]["latency"]["p99Ms"] = 0.001
    reapply(control_plane, manifest)
    over = wait_for(judged("False"), 60, f"LatencyWithinThreshold=False\n{operator.logs(40)}")
    assert over["reason"] == "ThresholdExceeded" and "p99LatencyMs" in over["message"], over
    warnings = [e for e in wait_event(kube, namespace, "m", "ThresholdExceeded", "Warning")
                if e["reason"] == "ThresholdExceeded"]
    assert len(warnings) == 1, warnings


# -- data drift of the served version: real MLflow run artifact, real scoring server, real Prometheus --------
def test_the_served_versions_drift_is_measured_against_its_reference_profile_and_reported(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, serve: Callable[[str, str], ScoringServer]) -> None:
    import numpy as np
    import pandas as pd
    import requests

    from modelpilot.monitoring import log_reference

    version = registry.register(model_name, alias="champion", seed=0)
    run_id = registry.client().get_model_version(model_name, version).run_id
    columns = [f"f{i}" for i in range(FEATURES)]
    training = pd.DataFrame(np.random.default_rng(0).normal(size=(4000, FEATURES)), columns=columns)
    log_reference(training, run_id)  # after registration, as for a model registered before modelpilot
    server = serve(model_name, version)  # finds the profile through the version's run; traffic like training
    selector = f'namespace="{namespace}",model="{model_name}",version="{version}"'

    def scraped(promql: str, at_least: float) -> bool:
        found = prometheus.query(promql)
        return bool(found) and float(found[0]["value"][1]) >= at_least

    wait_for(lambda: scraped(f"sum(modelpilot_drift_samples{{{selector}}})", 500), 90, "500 rows in Prometheus")
    manifest = mdep_manifest("m", namespace, f"models:/{model_name}@champion", monitoring={"drift": {
        "minSamples": 500, "prometheusUrl": prometheus.url}})
    apply(control_plane, manifest)

    def drifting(reason: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            found = condition(get_mdep(kube, namespace, "m"), "Drifting")
            return found if found.get("reason") == reason else None
        return check

    calm = wait_for(drifting("NoDrift"), 120, f"Drifting=False\n{operator.logs(40)}")
    assert calm["status"] == "False" and "rows (warn 0.1, alert 0.25)" in calm["message"], calm
    # the world moves: f2 arrives shifted by three standard deviations
    moved = pd.DataFrame(np.random.default_rng(1).normal(size=(3000, FEATURES)), columns=columns)
    moved["f2"] += 3
    for start in range(0, len(moved), 100):
        part = moved.iloc[start:start + 100].to_dict(orient="split", index=False)
        assert requests.post(f"{server.url}/invocations", json={"dataframe_split": part}, timeout=30).ok
    wait_for(lambda: scraped(f'max(modelpilot_feature_drift{{{selector},feature="f2"}})', 0.25), 60,
             "f2's drift in Prometheus")
    manifest["spec"]["monitoring"]["drift"]["alert"] = 0.3  # new settings: judged again at once
    reapply(control_plane, manifest)
    alert = wait_for(drifting("DriftAlert"), 60, f"Drifting=True\n{operator.logs(40)}")
    assert alert["status"] == "True" and "feature f2 PSI" in alert["message"], alert
    wide = control_plane.kubectl("get", "modeldeployment", "m", "-n", namespace, "-o", "wide").stdout
    print(f"\n{wide}")
    assert "DRIFT" in wide.splitlines()[0] and "DriftAlert" in wide, wide
    assert [e for e in wait_event(kube, namespace, "m", "DriftAlert", "Warning") if e["reason"] == "DriftAlert"]


def test_every_panel_of_the_grafana_dashboard_shows_data_from_real_servers_and_the_real_operator(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, prometheus: PrometheusServer, serve: Callable[..., ScoringServer]) -> None:
    """Every query of every panel (and of the variables) parses in the real Prometheus and returns series, once
    real scoring servers (stable with a reference profile, a manual canary) and the operator are scraped."""
    import urllib.error
    import urllib.parse
    import urllib.request

    import mlflow
    import numpy as np
    import pandas as pd

    from modelpilot.monitoring import log_reference
    from tests.chart.test_chart import dashboard_queries

    v1 = registry.register(model_name, alias="champion", seed=0)
    columns = [f"f{i}" for i in range(FEATURES)]
    training = pd.DataFrame(np.random.default_rng(0).normal(size=(1000, FEATURES)), columns=columns)
    mlflow.set_tracking_uri(registry.url)
    log_reference(training, registry.client().get_model_version(model_name, v1).run_id,
                  predictions=mlflow.pyfunc.load_model(f"models:/{model_name}/{v1}").predict(training))
    v2 = registry.register(model_name, alias="challenger", seed=1)
    serve(model_name, v1)
    serve(model_name, v2)
    prometheus.add_target("operator", f"127.0.0.1:{operator.metrics_port}", {})
    try:
        apply(control_plane, mdep_manifest(
            "m", namespace, f"models:/{model_name}@champion", traffic={"router": "replicas"}, replicas=4,
            canary={"model": {"uri": f"models:/{model_name}@challenger"}, "weight": 25},
            monitoring={"maxModelAge": "30d", "latency": {"p99Ms": 500, "prometheusUrl": prometheus.url}}))
        wait_canary(kube, namespace, "m", "the manual canary to run",
                    lambda s: (s.get("canary") or {}).get("version") == v2, operator)

        dashboard = json.loads((REPO / "charts" / "modelpilot" / "files" / "grafana-dashboard.json").read_text())
        grafana = {"$namespace": namespace, "$model": model_name, "$version": ".*", "$__rate_interval": "1m"}
        queries = []
        for expr in dashboard_queries(dashboard):
            for variable, value in grafana.items():
                expr = expr.replace(variable, value)
            queries.append(expr)

        def empty() -> list[str]:
            found = []
            for expr in queries:
                url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
                try:
                    with urllib.request.urlopen(url, timeout=10) as resp:
                        answer = json.loads(resp.read())
                except urllib.error.HTTPError as exc:
                    raise AssertionError(f"{expr}: {exc.read().decode()}") from None
                assert answer["status"] == "success", expr
                if not answer["data"]["result"]:
                    found.append(expr)
            return found

        left: list[str] = []

        def all_answered() -> bool:
            left[:] = empty()
            return not left

        try:
            wait_for(all_answered, 90, "every dashboard query to return series")
        except TimeoutError:
            raise AssertionError("queries that returned nothing:\n" + "\n".join(left)) from None
    finally:
        prometheus.remove_target("operator")
