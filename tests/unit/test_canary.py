"""The canary planner and its arithmetic, walked with a fake clock (no cluster, no registry)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpilot import canary as c
from modelpilot.analysis import DEFAULT_QUERIES, evaluate
from modelpilot.canary_state import CanaryState
from modelpilot.config import Settings
from modelpilot.promql import promql_string, render_query
from modelpilot.registry import ResolvedModel
from modelpilot.spec import InvalidSpec, parse_spec
from modelpilot.traffic import effective_weight, split_replicas

SETTINGS = Settings(default_tracking_uri="http://mlflow:5000")
V1 = ResolvedModel(name="fraud", version="1")
V2 = ResolvedModel(name="fraud", version="2")
V3 = ResolvedModel(name="fraud", version="3")
T0 = 1_800_000_000.0


def spec(**canary: Any) -> Any:
    return parse_spec({"model": {"uri": "models:/fraud@champion"}, "canary": canary}, SETTINGS)


PROGRESSIVE = spec(steps=[{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "2m"}],
                   analysis={"prometheusUrl": "http://prom:9090", "maxErrorRate": 0.01})


def observe(**kw: Any) -> c.Observed:
    """Observations; `previous` may be written as status.canary is stored (a dict) or as the typed state."""
    base: dict[str, Any] = {"stable": V1, "target": V2, "candidate": V2, "previous": None, "rejected": {}}
    if isinstance(kw.get("previous"), dict):
        kw["previous"] = CanaryState.from_status({"model": V2.to_status(V2.pinned), **kw["previous"]})
    return c.Observed(**{**base, **kw})


PASS = c.Verdict("pass", "errorRate 0 (max 0.01) over 50 requests in 1m", {"errorRate": 0.0})
FAIL = c.Verdict("fail", "errorRate 0.3 (max 0.01) over 50 requests in 1m", {"errorRate": 0.3})
NODATA = c.Verdict("inconclusive", "no canary requests in the last 1m (minRequests 10)")


def walk(obs: c.Observed, now: float, verdict: c.Verdict | None = None) -> tuple[c.Plan, dict[str, Any]]:
    plan = c.plan(PROGRESSIVE, obs, now, verdict)
    return plan, plan.status.to_status() if plan.status else {}


# -- replica arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "weight", "expected"), [
    pytest.param(4, 25, (3, 1), id="exact"),
    pytest.param(4, 0, (4, 0), id="no-canary"),
    pytest.param(1, 10, (1, 1), id="one-replica-still-gets-a-canary-pod"),
    pytest.param(3, 50, (1, 2), id="rounds-to-nearest-pod"),
    pytest.param(10, 100, (0, 10), id="all-canary"),
    pytest.param(2, 99, (1, 1), id="stable-keeps-a-pod-below-100"),
    pytest.param(0, 50, (0, 0), id="scaled-to-zero"),
])
def test_split_replicas(total: int, weight: int, expected: tuple[int, int]) -> None:
    assert split_replicas(total, weight) == expected


@given(st.integers(1, 200), st.integers(0, 100))
def test_split_replicas_properties(total: int, weight: int) -> None:
    stable, canary = split_replicas(total, weight)
    assert stable >= 0 and canary >= 0
    if 0 < weight < 100:
        assert stable >= 1 and canary >= 1
    if total >= 2:
        assert stable + canary == total
        # the nearest achievable split: within one pod's share of the requested weight
        if 0 < weight < 100 and 100 / total <= weight <= 100 - 100 / total:
            assert abs(effective_weight(stable, canary) - weight) <= 50 / total + 1


# -- progressive rollout ------------------------------------------------------------------------------
def test_first_deployment_goes_straight_to_stable() -> None:
    plan = c.plan(PROGRESSIVE, observe(stable=None), T0)
    assert plan.stable == V2 and plan.canary is None and plan.status is None


def test_new_version_starts_as_canary_with_no_traffic_until_ready() -> None:
    plan, status = walk(observe(), T0)
    assert plan.stable == V1 and plan.canary == V2 and plan.weight == 0
    assert status["phase"] == c.STARTING and status["step"] == 1
    assert [e[1] for e in plan.events] == ["CanaryStarted"]


def test_full_walk_to_promotion() -> None:
    _, status = walk(observe(), T0)
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 5)
    assert (status["phase"], status["step"], plan.weight, plan.requeue) == (c.RUNNING, 1, 10, 60)
    # within the pause nothing moves
    plan, held = walk(observe(previous=status, canary_ready=True), T0 + 30)
    assert held["step"] == 1 and plan.weight == 10 and plan.requeue == pytest.approx(35)
    assert c.analysis_window(PROGRESSIVE.canary, CanaryState.from_status(status), T0 + 30) is None
    assert c.analysis_window(PROGRESSIVE.canary, CanaryState.from_status(status), T0 + 65) == 60
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 65, PASS)
    assert (status["step"], plan.weight, status["analysis"]["result"]) == (2, 50, "pass")
    assert "step 1 passed" in plan.events[0][2]
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 190, PASS)
    assert status["phase"] == c.PROMOTING and plan.stable == V2 and plan.canary == V2 and plan.weight == 50
    # stable still rolling: canary keeps its share
    plan, status = walk(observe(stable=V2, previous=status, canary_ready=True, stable_version="1"), T0 + 195)
    assert status["phase"] == c.PROMOTING and plan.canary == V2
    plan, status = walk(observe(stable=V2, previous=status, canary_ready=True, stable_version="2",
                                stable_complete=True), T0 + 200)
    assert plan.status is None and plan.canary is None and plan.stable == V2
    assert plan.finished and plan.finished["result"] == "Promoted"
    assert [e[1] for e in plan.events] == ["Promoted"]


def running_at_step(step: int = 1) -> dict[str, Any]:
    _, status = walk(observe(), T0)
    _, status = walk(observe(previous=status, canary_ready=True), T0)
    if step == 2:
        _, status = walk(observe(previous=status, canary_ready=True), T0 + 61, PASS)
    return status


def test_failed_analysis_rolls_back_and_the_version_is_not_retried() -> None:
    plan, _ = walk(observe(previous=running_at_step(), canary_ready=True), T0 + 61, FAIL)
    assert plan.canary is None and plan.weight == 0 and plan.status is None
    assert plan.rejected and plan.rejected["version"] == "2" and "errorRate 0.3" in plan.rejected["reason"]
    assert plan.finished and plan.finished["result"] == "RolledBack"
    assert plan.events[0][:2] == ("Warning", "RolledBack")
    # the alias still points at v2: nothing starts
    again = c.plan(PROGRESSIVE, observe(rejected=plan.rejected), T0 + 100)
    assert again.canary is None and again.status is None and again.rejected == plan.rejected
    # the alias moves to v3: the rejection is lifted and v3 starts
    moved = c.plan(PROGRESSIVE, observe(candidate=V3, target=V3, rejected=plan.rejected), T0 + 200)
    assert moved.rejected is None and moved.canary == V3


def test_missing_data_waits_and_never_promotes() -> None:
    status = running_at_step()
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 61, NODATA)
    assert status["phase"] == c.INCONCLUSIVE and status["step"] == 1 and plan.weight == 10
    assert plan.requeue == c.RETRY_SECONDS and plan.stable == V1
    assert [e[:2] for e in plan.events] == [("Warning", "AnalysisInconclusive")]
    # between retries the analysis is not due, and nothing changes
    assert c.analysis_window(PROGRESSIVE.canary, CanaryState.from_status(status), T0 + 65) is None
    plan, held = walk(observe(previous=status, canary_ready=True), T0 + 65)
    assert held == status and plan.events == [] and plan.requeue == pytest.approx(11)
    assert c.analysis_window(PROGRESSIVE.canary, CanaryState.from_status(status), T0 + 80) == 60
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 80, NODATA)
    assert status["phase"] == c.INCONCLUSIVE and plan.events == [], "one warning, not one per retry"
    plan, status = walk(observe(previous=status, canary_ready=True), T0 + 95, PASS)
    assert status["phase"] == c.RUNNING and status["step"] == 2


def test_registry_outage_pauses_and_resumes_at_the_same_step() -> None:
    status = running_at_step(2)
    plan, paused = walk(observe(candidate=None, target=None, previous=status, canary_ready=True), T0 + 500)
    assert paused["phase"] == c.PAUSED and paused["step"] == 2 and plan.weight == 50 and plan.canary == V2
    assert plan.stable == V1, "never promotes while the registry is away"
    plan, resumed = walk(observe(previous=paused, canary_ready=True), T0 + 510, PASS)
    assert resumed["phase"] == c.PROMOTING


def test_candidate_moving_mid_rollout_restarts_with_the_new_version() -> None:
    plan, status = walk(observe(candidate=V3, target=V3, previous=running_at_step(2)), T0 + 70)
    assert plan.canary == V3 and status["step"] == 1 and status["phase"] == c.STARTING
    assert [e[1] for e in plan.events] == ["CanaryRestarted", "CanaryStarted"]
    assert plan.finished and plan.finished["result"] == "Superseded"


def test_candidate_moving_back_to_stable_cancels() -> None:
    plan, _ = walk(observe(candidate=V1, target=V1, previous=running_at_step()), T0 + 10)
    assert plan.canary is None and plan.status is None and plan.finished and plan.finished["result"] == "Cancelled"


def test_restart_mid_promotion_finishes_it() -> None:
    status = {**running_at_step(2), "phase": c.PROMOTING, "weight": 50}
    # status.model already names v2 (it was written when promotion began)
    plan, st = walk(observe(stable=V2, previous=status, stable_version="2", stable_complete=False), T0 + 300)
    assert st["phase"] == c.PROMOTING and plan.stable == V2 and plan.canary == V2
    plan, _ = walk(observe(stable=V2, previous=status, stable_version="2", stable_complete=True), T0 + 301)
    assert plan.finished and plan.finished["result"] == "Promoted"


@pytest.mark.parametrize(("annotation", "result"), [
    pytest.param({c.ANNOTATION_PROMOTE: "2"}, c.PROMOTING, id="promote"),
    pytest.param({c.ANNOTATION_ABORT: "2"}, "RolledBack", id="abort"),
    pytest.param({c.ANNOTATION_PROMOTE: "7"}, c.RUNNING, id="promote-other-version-is-ignored"),
])
def test_manual_promote_and_abort(annotation: dict[str, str], result: str) -> None:
    plan, status = walk(observe(previous=running_at_step(), canary_ready=True, annotations=annotation), T0 + 5)
    if result == "RolledBack":
        assert plan.finished and plan.finished["result"] == "RolledBack" and plan.canary is None
    else:
        assert status["phase"] == result


def test_step_without_pause_waits_for_promotion() -> None:
    gated = spec(steps=[{"weight": 20}])
    previous = {"startedAt": "x", "step": 1, "phase": c.STARTING, "version": "2"}
    plan = c.plan(gated, observe(previous=previous, canary_ready=True), T0 + 1000)
    assert plan.status and plan.status.phase == c.WAITING and plan.weight == 20
    plan = c.plan(gated, observe(previous=plan.status, canary_ready=True), T0 + 100_000)
    assert plan.status and plan.status.phase == c.WAITING, "no timer promotes a gated step"


def test_failing_canary_pods_roll_back() -> None:
    plan, _ = walk(observe(previous={"step": 1, "phase": c.STARTING, "version": "2"},
                           canary_failure="ProgressDeadlineExceeded"), T0)
    assert plan.rejected and "pods failed" in plan.rejected["reason"]


# -- manual canary ------------------------------------------------------------------------------------
MANUAL = spec(model={"uri": "models:/fraud@challenger"}, weight=30)


def test_manual_canary_runs_at_its_weight_once_ready() -> None:
    plan = c.plan(MANUAL, observe(target=V1, candidate=V2), T0)
    assert plan.canary == V2 and plan.weight == 0 and plan.status and plan.status.phase == c.STARTING
    plan = c.plan(MANUAL, observe(target=V1, candidate=V2, previous=plan.status, canary_ready=True), T0)
    assert plan.weight == 30 and plan.status and plan.status.phase == c.MANUAL and plan.events == []


def test_manual_canary_equal_to_stable_runs_nothing() -> None:
    plan = c.plan(MANUAL, observe(target=V2, candidate=V2, previous={"version": "2"}), T0)
    assert plan.canary is None and [e[1] for e in plan.events] == ["CanaryStopped"]


def test_removing_the_canary_section() -> None:
    plain = parse_spec({"model": {"uri": "models:/fraud@champion"}}, SETTINGS)
    plan = c.plan(plain, observe(previous={"version": "2"}), T0)
    assert plan.stable == V2 and plan.canary is None and [e[1] for e in plan.events] == ["CanaryRemoved"]


# -- spec parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "message"), [
    pytest.param({"canary": {"weight": 10}}, "needs model.uri", id="nothing-to-run"),
    pytest.param({"canary": {"steps": [{"weight": 101}]}}, "between 0 and 100", id="weight"),
    pytest.param({"canary": {"steps": [{"weight": 5, "pause": "soon"}]}}, "steps[0].pause", id="pause"),
    pytest.param({"canary": {"model": {"uri": "models:/x@y"}, "analysis": {"maxErrorRate": 0.1}}},
                 "set spec.canary.steps", id="analysis-without-steps"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {"maxErrorRate": 0.1}}},
                 "prometheusUrl", id="no-prometheus"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {"prometheusUrl": "http://p"}}},
                 "maxErrorRate, maxP99LatencyMs or maxPredictionDrift", id="no-threshold"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {"prometheusUrl": "http://p",
                                                                   "maxPredictionDrift": 0}}},
                 "maxPredictionDrift must be above 0", id="drift-zero"),
    pytest.param({"canary": {"model": {"uri": "models:/other@challenger"}, "steps": [{"weight": 5}],
                             "analysis": {"prometheusUrl": "http://p", "maxPredictionDrift": 0.2}}},
                 "compares versions of one registered model", id="drift-other-model"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {"prometheusUrl": "http://p", "maxErrorRate": 2}}},
                 "share between 0 and 1", id="rate-above-one"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {
        "prometheusUrl": "http://p", "maxErrorRate": 0.1, "queries": {"errors": "x"}}}}, "unknown: errors",
                 id="unknown-query"),
    pytest.param({"traffic": {"router": "istio"}}, "spec.traffic.router", id="router"),
    pytest.param({"traffic": {"router": "gatewayAPI"}}, "parentRefs is empty", id="gateway-without-parents"),
    pytest.param({"traffic": {"router": "replicas"}, "canary": {"model": {"uri": "models:/x@y"}, "shadow": True}},
                 "shadow", id="shadow-needs-gateway"),
])
def test_invalid_canary_specs_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=None) as info:
        parse_spec({"model": {"uri": "models:/fraud@champion"}, **raw}, SETTINGS)
    assert message in str(info.value)


def test_default_prometheus_comes_from_the_operator() -> None:
    parsed = parse_spec({"model": {"uri": "models:/f@c"}, "canary": {"steps": [{"weight": 5, "pause": "1m"}],
                         "analysis": {"maxP99LatencyMs": 200}}},
                        Settings(default_tracking_uri="http://m", default_prometheus_url="http://prom:9090/"))
    assert parsed.canary and parsed.canary.analysis and str(parsed.canary.analysis.prometheus) == "http://prom:9090"


# -- analysis -----------------------------------------------------------------------------------------
def test_queries_escape_label_values() -> None:
    assert promql_string('a"b\\c') == 'a\\"b\\\\c'
    query = render_query(DEFAULT_QUERIES["requests"], {"namespace": "ns", "model": 'evil"}', "version": "2",
                                                       "window": "60s"})
    assert 'model="evil\\"}"' in query and "[60s]" in query


@pytest.mark.parametrize(("values", "outcome", "text"), [
    pytest.param({"requests": 100, "errorRate": 0.0, "p99LatencyMs": 40}, "pass", "errorRate 0 (max 0.01)", id="ok"),
    pytest.param({"requests": 100, "errorRate": 0.2, "p99LatencyMs": 40}, "fail", "errorRate 0.2", id="errors"),
    pytest.param({"requests": 100, "errorRate": 0.0, "p99LatencyMs": 900}, "fail", "p99LatencyMs 900.0 ms",
                 id="slow"),
    pytest.param({"requests": 3, "errorRate": 0.0, "p99LatencyMs": 40}, "inconclusive", "only 3", id="few"),
    pytest.param({"requests": None}, "inconclusive", "no canary requests", id="none"),
    pytest.param({"requests": 100, "errorRate": None, "p99LatencyMs": 40}, "inconclusive", "no errorRate",
                 id="nan"),
])
def test_evaluate(values: dict[str, float | None], outcome: str, text: str) -> None:
    analysis = PROGRESSIVE.canary.analysis
    assert analysis is not None
    limits = type(analysis)(**{**analysis.__dict__, "max_p99_latency_ms": 250.0})

    async def query(promql: str) -> float | None:
        key = ("requests" if "increase(" in promql else "errorRate" if '5..' in promql
               else "p99LatencyMs" if "histogram_quantile" in promql else "")
        return values.get(key)

    verdict = asyncio.run(evaluate(limits, {"namespace": "n", "name": "f", "model": "m", "version": "2"}, 60, query))
    assert verdict.outcome == outcome and text in verdict.message, verdict


def test_steps_edited_mid_rollout_to_fewer_steps() -> None:
    status = running_at_step(2)
    shorter = spec(steps=[{"weight": 10, "pause": "1m"}],
                   analysis={"prometheusUrl": "http://prom:9090", "maxErrorRate": 0.01})
    assert c.analysis_window(shorter.canary, CanaryState.from_status(status), T0 + 200) == 60
    plan = c.plan(shorter, observe(previous=status, canary_ready=True), T0 + 200, PASS)
    assert plan.status and plan.status.phase == c.PROMOTING


# -- the typed state ------------------------------------------------------------------------------------
def test_canary_state_round_trips_through_status() -> None:
    _, status = walk(observe(previous=running_at_step(2), canary_ready=True), T0 + 100)
    state = CanaryState.from_status(status)
    assert state is not None and state.to_status() == status and state.step == 2
    assert set(status) >= {"version", "model", "phase", "weight", "step", "startedAt", "stepStartedAt", "message"}


@pytest.mark.parametrize("raw", [None, {}, "x", {"version": "2"}, {"version": "2", "model": {"name": "m"}},
                                 {"version": "", "model": {"name": "m", "version": "2"}}])
def test_a_status_that_holds_no_canary_reads_as_none(raw: Any) -> None:
    assert CanaryState.from_status(raw) is None


def test_odd_values_in_status_fall_back_to_defaults() -> None:
    state = CanaryState.from_status({"version": "2", "model": {"name": "m", "version": "2"}, "step": "three",
                                     "weight": True, "phase": 7, "analysis": "no"})
    assert state is not None and (state.step, state.weight, state.phase, state.analysis) == (1, 0, c.STARTING, None)


@pytest.mark.parametrize(("drift", "outcome", "text"), [
    pytest.param(0.05, "pass", "predictionDrift 0.050 (max 0.2)", id="alike"),
    pytest.param(0.9, "fail", "predictionDrift 0.900 (max 0.2)", id="different"),
    pytest.param(None, "inconclusive", "stable's run needs one with predictions", id="no-profile"),
])
def test_the_canarys_predictions_are_compared_with_stables(drift: float | None, outcome: str, text: str) -> None:
    parsed = parse_spec({"model": {"uri": "models:/f@c"}, "canary": {
        "steps": [{"weight": 5, "pause": "1m"}], "analysis": {"maxPredictionDrift": 0.2}}},
        Settings(default_tracking_uri="http://m", default_prometheus_url="http://prom:9090"))
    analysis = parsed.canary.analysis if parsed.canary else None
    assert analysis is not None and analysis.max_prediction_drift == 0.2
    asked: list[str] = []

    async def query(promql: str) -> float | None:
        asked.append(promql)
        return drift if "modelpilot_prediction_bin_total" in promql else 100.0

    variables = {"namespace": "n", "name": "f", "model": "m", "version": "3", "stableVersion": "2"}
    verdict = asyncio.run(evaluate(analysis, variables, 60, query))
    assert verdict.outcome == outcome and text in verdict.message, verdict
    (psi,) = [q for q in asked if "prediction_bin" in q]
    assert 'version="3",baseline="2"' in psi and 'version="2",baseline="2"' in psi and "[60s]" in psi
