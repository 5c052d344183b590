"""Tenant-written URLs and what servers answer: parsed and judged as data."""

from __future__ import annotations

import asyncio
import json

import pytest

from modelpilot.analysis import PrometheusError, evaluate, judge, parse_answer
from modelpilot.config import Settings
from modelpilot.spec import Analysis, InvalidSpec, parse_spec
from modelpilot.urls import InvalidURL, parse_base_url
from modelpilot.workqueue import Stalled, WorkQueue


@pytest.mark.parametrize(("text", "joined"), [
    pytest.param("http://mlflow:5000", "http://mlflow:5000/api/2.0/mlflow/x", id="plain"),
    pytest.param("https://mlflow.example/", "https://mlflow.example/api/2.0/mlflow/x", id="trailing-slash"),
    pytest.param("http://svc/prefix/", "http://svc/prefix/api/2.0/mlflow/x", id="path"),
    pytest.param("http://[::1]:8080", "http://[::1]:8080/api/2.0/mlflow/x", id="ipv6"),
    pytest.param("http://svc/a%3Fb", "http://svc/a%3Fb/api/2.0/mlflow/x", id="encoded-question-mark-stays-path"),
])
def test_base_urls_join_paths_from_parsed_parts(text: str, joined: str) -> None:
    assert parse_base_url(text, "f").join("/api/2.0/mlflow/x") == joined


@pytest.mark.parametrize(("text", "says"), [
    pytest.param("http://svc/internal/admin?x=", "query", id="query"),
    pytest.param("http://svc/x#frag", "fragment", id="fragment"),
    pytest.param("http://user:pw@svc", "credentials", id="userinfo"),
    pytest.param("http://@svc", "credentials", id="empty-userinfo"),
    pytest.param("ftp://svc", "http://", id="scheme"),
    pytest.param("file:///etc/passwd", "http://", id="file"),
    pytest.param("http://", "no host", id="no-host"),
    pytest.param("http://svc:99999", "valid URL", id="port"),
    pytest.param("http://svc/../admin", "'..'", id="dot-dot"),
    pytest.param(" http://svc", "whitespace", id="space"),
    pytest.param("http://svc/a\nb", "whitespace", id="newline"),
    pytest.param("http:\\\\svc", "backslash", id="backslash"),
    pytest.param(42, "http(s) URL", id="not-a-string"),
])
def test_bad_base_urls_are_refused_naming_the_field(text: object, says: str) -> None:
    with pytest.raises(InvalidURL) as err:
        parse_base_url(text, "spec.registry.trackingUri")
    assert "spec.registry.trackingUri" in str(err.value) and says in str(err.value)


SETTINGS = Settings(default_tracking_uri="http://mlflow.platform:5000", default_credentials_secret="platform-auth")
BASE = {"model": {"uri": "models:/m@champion"}}


@pytest.mark.parametrize(("registry", "secret", "required"), [
    pytest.param({}, "platform-auth", False, id="default-registry-gets-the-default-secret"),
    pytest.param({"trackingUri": "http://mlflow.platform:5000/"}, "platform-auth", False, id="same-as-default"),
    pytest.param({"trackingUri": "http://tenant-mlflow:5000"}, None, False, id="own-registry-no-secret"),
    pytest.param({"trackingUri": "http://tenant-mlflow:5000", "credentialsSecretRef": {"name": "mine"}}, "mine", True,
                 id="own-registry-own-secret"),
    pytest.param({"credentialsSecretRef": {"name": "mine"}}, "mine", True, id="default-registry-own-secret"),
])
def test_credentials_go_only_where_they_were_configured(registry: dict[str, object], secret: str | None,
                                                        required: bool) -> None:
    spec = parse_spec({**BASE, "registry": registry}, SETTINGS)
    assert (spec.credentials_secret, spec.credentials_required) == (secret, required)


@pytest.mark.parametrize(("url", "allowed"), [
    pytest.param("https://mlflow.team-a.svc", True, id="listed"),
    pytest.param("https://mlflow.team-a.svc/sub/path", True, id="below-a-listed-path"),
    pytest.param("https://MLFLOW.team-a.svc", True, id="host-case"),
    pytest.param("http://mlflow.team-a.svc", False, id="other-scheme"),
    pytest.param("https://mlflow.team-a.svc:8443", False, id="other-port"),
    pytest.param("https://mlflow.team-a.svc.evil.example", False, id="suffix-host"),
    pytest.param("https://shared.svc/teamb", False, id="sibling-path"),
    pytest.param("https://shared.svc/team", True, id="exact-path"),
    pytest.param("http://mlflow.platform:5000", True, id="the-default-always"),
])
def test_registry_allowlist(url: str, allowed: bool) -> None:
    settings = Settings(default_tracking_uri="http://mlflow.platform:5000",
                        allowed_registry_urls=("https://mlflow.team-a.svc", "https://shared.svc/team"))
    spec = {**BASE, "registry": {"trackingUri": url}}
    if allowed:
        parse_spec(spec, settings)
    else:
        with pytest.raises(InvalidSpec, match=r"spec\.registry\.trackingUri .* not among"):
            parse_spec(spec, settings)


@pytest.mark.parametrize(("spec", "field"), [
    pytest.param({"resources": {"requests": {"cpu": "lots"}}}, "spec.resources.requests.cpu", id="quantity"),
    pytest.param({"runtime": {"env": [{"name": "A", "value": "1", "valueFrom": {}}]}}, "spec.runtime.env[0]",
                 id="env-both"),
    pytest.param({"canary": {"steps": [{"weight": 5}], "analysis": {"prometheusUrl": "http://p?x=",
                                                                     "maxErrorRate": 0.1}}},
                 "spec.canary.analysis.prometheusUrl", id="prometheus-query"),
])
def test_specs_the_api_server_would_refuse_are_invalid_specs(spec: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec, match=field.replace(".", r"\.").replace("[", r"\[")):
        parse_spec({**BASE, **spec}, SETTINGS)


# -- Prometheus answers, canned --------------------------------------------------------------------------
def vector(*values: str) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"i": str(i)}, "value": [1.0, v]} for i, v in enumerate(values)]}}).encode()


@pytest.mark.parametrize(("status", "body", "expected"), [
    pytest.param(200, vector("0.25"), 0.25, id="one-number"),
    pytest.param(200, vector(), None, id="empty-vector"),
    pytest.param(200, vector("NaN"), None, id="nan"),
    pytest.param(200, vector("+Inf"), None, id="inf"),
    pytest.param(200, json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}}).encode(),
                 7.0, id="scalar"),
])
def test_prometheus_answers(status: int, body: bytes, expected: float | None) -> None:
    assert parse_answer(status, body, "q") == expected


@pytest.mark.parametrize(("status", "body", "says"), [
    pytest.param(200, vector("1", "2"), "2 series", id="two-series"),
    pytest.param(400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode(),
                 "HTTP 400 bad_data", id="http-400"),
    pytest.param(502, b"<html>gateway</html>", "without JSON", id="html"),
    pytest.param(200, b"[1, 2]", "not an API answer", id="json-list"),
    pytest.param(200, vector("lots"), "did not return a number", id="not-a-number"),
])
def test_prometheus_errors(status: int, body: bytes, says: str) -> None:
    with pytest.raises(PrometheusError, match=says):
        parse_answer(status, body, "q")


ANALYSIS = Analysis(prometheus=parse_base_url("http://p", "f"), max_error_rate=0.01, max_p99_latency_ms=250,
                    min_requests=10, window_seconds=None, queries={})


@pytest.mark.parametrize("values", [
    pytest.param({"requests": float("nan"), "errorRate": 0.0, "p99LatencyMs": 10.0}, id="nan-requests"),
    pytest.param({"requests": 100.0, "errorRate": float("nan"), "p99LatencyMs": 10.0}, id="nan-errors"),
    pytest.param({"requests": 100.0, "errorRate": 0.0, "p99LatencyMs": float("inf")}, id="inf-latency"),
    pytest.param({"requests": float("inf"), "errorRate": 0.0, "p99LatencyMs": 1.0}, id="inf-requests"),
    pytest.param({"requests": 9.0, "errorRate": 0.0, "p99LatencyMs": 1.0}, id="below-min-requests"),
])
def test_non_finite_or_too_little_data_never_passes(values: dict[str, float | None]) -> None:
    assert judge(ANALYSIS, values, 60).outcome == "inconclusive"


def test_a_query_timeout_is_inconclusive() -> None:
    async def slow(_: str) -> float | None:
        raise TimeoutError

    assert asyncio.run(evaluate(ANALYSIS, {}, 60, slow)).outcome == "inconclusive"


# -- the work queue's liveness ------------------------------------------------------------------------------
def test_liveness_fails_when_due_work_makes_no_progress() -> None:
    async def scenario() -> None:
        import threading

        release = threading.Event()
        queue: WorkQueue[str] = WorkQueue(lambda _k: release.wait(10) and None, workers=1)
        runner = asyncio.create_task(queue.run())
        await asyncio.sleep(1.2)  # idle longer than the stall window: no stall by itself
        queue.add("stuck")
        queue.add("waiting")
        await asyncio.sleep(0.3)
        queue.check_progress(stall_seconds=1.0)  # not yet stalled
        await asyncio.sleep(1.2)
        with pytest.raises(Stalled):
            queue.check_progress(stall_seconds=1.0)
        release.set()
        await asyncio.sleep(0.3)
        queue.check_progress(stall_seconds=1.0)  # progress again
        runner.cancel()
        queue.shutdown()

    asyncio.run(scenario())
