"""The scoring server over real HTTP, serving real MLflow models, checked against `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hack.proc import wait_for
from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS, training_frame

ROWS = training_frame(40, seed=7).round(4)


def split(rows: Any) -> dict[str, Any]:
    return {"dataframe_split": {"columns": COLUMNS, "data": rows}}


def one(i: int) -> list[float]:
    return [float(v) for v in ROWS.iloc[i]]


PAYLOADS = {
    "split-1": json.dumps(split([one(0)])),
    "split-3": json.dumps(split([one(1), one(2), one(3)])),
    "split-ints": json.dumps(split([[1, 0, 2, -1, 0]])),
    "split-reordered": json.dumps({"dataframe_split": {"columns": COLUMNS[::-1], "data": [one(4)[::-1]]}}),
    "records": json.dumps({"dataframe_records": ROWS.iloc[5:8].to_dict(orient="records")}),
    "instances": json.dumps({"instances": ROWS.iloc[8:10].to_dict(orient="records")}),
    "inputs-columns": json.dumps({"inputs": {c: list(ROWS[c].iloc[10:12]) for c in COLUMNS}}),
    "split-with-index": json.dumps({"dataframe_split": {"columns": COLUMNS, "index": [5, 6],
                                                        "data": [one(12), one(13)]}}),
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_responses_equal_mlflow_models_serve(sklearn_server: Server, mlflow_reference: Server, name: str) -> None:
    ours = sklearn_server.post("/invocations", PAYLOADS[name])
    theirs = mlflow_reference.post("/invocations", PAYLOADS[name])
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    assert ours.content == theirs.content, "byte-for-byte the same body as mlflow models serve"


def test_csv_equals_mlflow_models_serve(sklearn_server: Server, mlflow_reference: Server) -> None:
    body = ROWS.iloc[14:17].to_csv(index=False)
    ours = sklearn_server.post("/invocations", body, "text/csv")
    theirs = mlflow_reference.post("/invocations", body, "text/csv")
    assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content)


@pytest.mark.parametrize(
    "payload",
    [pytest.param(split([[1.0, 2.0]]), id="missing-columns"),
     pytest.param({"dataframe_split": {"columns": ["f0", "x1", "x2", "x3", "x4"], "data": [[1, 2, 3, 4, 5]]}},
                  id="wrong-columns"),
     pytest.param(split([["a", "b", "c", "d", "e"]]), id="strings-for-doubles")],
)
def test_schema_violations_are_400_like_mlflow(sklearn_server: Server, mlflow_reference: Server,
                                               payload: dict[str, Any]) -> None:
    ours = sklearn_server.post("/invocations", json.dumps(payload))
    theirs = mlflow_reference.post("/invocations", json.dumps(payload))
    assert theirs.status_code == 400
    assert ours.status_code == 400 and ours.headers["content-type"] == "application/json"
    body = ours.json()
    assert body["error_code"] == "BAD_REQUEST" and body["message"] and "Traceback" not in body["message"]


def _bucket(server: Server, le: str) -> float:
    """Predict calls so far with at most `le` rows (modelpilot_batch_size_rows)."""
    return _metric(server, f'modelpilot_batch_size_rows_bucket{{le="{le}"')


def _calls(server: Server) -> float:
    return _metric(server, "modelpilot_batch_size_rows_count")


def test_concurrent_requests_are_batched_and_answers_match_unbatched(sklearn_server: Server) -> None:
    single = {i: sklearn_server.post("/invocations", json.dumps(split([one(i)]))).json() for i in range(40)}
    calls, singles = _calls(sklearn_server), _bucket(sklearn_server, "1.0")
    with ThreadPoolExecutor(40) as pool:
        batched = dict(zip(range(40), pool.map(
            lambda i: sklearn_server.post("/invocations", json.dumps(split([one(i)]))).json(), range(40)),
            strict=True))
    assert batched == single
    calls = _calls(sklearn_server) - calls
    merged = calls - (_bucket(sklearn_server, "1.0") - singles)
    assert merged >= 1, f"40 concurrent requests took {calls:.0f} predict calls, none with more than one row"
    assert calls <= 30, f"40 concurrent requests took {calls:.0f} predict calls: hardly anything was batched"


def test_bad_request_never_poisons_its_batch_mates(sklearn_server: Server) -> None:
    """The bad request has the good ones' merge key (the key reads the first row's columns and value types;
    its second row is wrong), so it is merged with them: the merged predict fails, and the fallback runs
    each request alone. Without that fallback, every batch-mate of the bad request would fail."""
    good = {i: sklearn_server.post("/invocations", json.dumps(split([one(i)]))).json() for i in range(20)}
    bad = json.dumps(split([one(0), ["oops", 1.0, 2.0, 3.0, 4.0]]))

    def call(i: int) -> tuple[int, Any]:
        body = bad if i % 4 == 0 else json.dumps(split([one(i)]))
        r = sklearn_server.post("/invocations", body)
        return r.status_code, r.json()

    for _attempt in range(5):  # concurrency decides what merges: until a bad request shared a batch
        before = _calls(sklearn_server) - _bucket(sklearn_server, "2.0")
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(call, range(20)))
        for i, (status, body) in enumerate(results):
            if i % 4 == 0:
                assert status == 400, body
            else:
                assert (status, body) == (200, good[i])
        if _calls(sklearn_server) - _bucket(sklearn_server, "2.0") > before:
            return  # a predict call of 3+ rows: the 2-row bad request merged with good ones (or goods alone)
    raise AssertionError("no batch of more than two rows formed in five rounds of 20 concurrent requests")


def test_max_batch_size_caps_the_rows_of_a_predict_call(start_server: StartServer,
                                                      model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["sklearn"], "--max-batch-size", "4", "--max-batch-delay-ms", "20")
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(lambda i: server.post("/invocations", json.dumps(split([one(i % 20)]))), range(48)))
    calls = _calls(server)
    assert _bucket(server, "4.0") == calls, "a predict call held more than --max-batch-size rows"
    assert calls - _bucket(server, "1.0") >= 1, "and batches did form (of 2 to 4 rows)"


def test_params_are_part_of_the_merge_key(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    """Requests with different params never share a predict call (each call gets one params dict)."""
    server = start_server(model_dirs["echo_params"], "--max-batch-delay-ms", "20")

    def call(i: int) -> tuple[int, Any]:
        body = {"dataframe_split": {"columns": ["x"], "data": [[float(i)]]}, "params": {"tag": f"p{i % 2}"}}
        r = server.post("/invocations", json.dumps(body))
        return i, r.json()

    with ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(call, range(32)))
    for i, body in answers.items():
        assert body["predictions"] == [f"p{i % 2}"], (i, body)


def test_a_lone_request_runs_at_once(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    """With a long batch delay, a request that has no company is not held back waiting for batch-mates."""
    import time

    server = start_server(model_dirs["sklearn"], "--max-batch-delay-ms", "2000")
    body = json.dumps(split([one(0)]))
    server.post("/invocations", body)  # warm
    took = []
    for _ in range(5):
        started = time.perf_counter()
        assert server.post("/invocations", body).status_code == 200
        took.append(time.perf_counter() - started)
    assert min(took) < 0.5, f"a lone request waited for batch-mates: {took}"


def test_frame_predictions_split_back_exactly(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["frame"])
    rows = {i: server.post("/invocations", json.dumps(split([one(i)]))).json() for i in range(16)}
    with ThreadPoolExecutor(16) as pool:
        batched = list(pool.map(lambda i: server.post("/invocations", json.dumps(split([one(i)]))).json(),
                                range(16)))
    assert batched == [rows[i] for i in range(16)]
    assert set(rows[0]["predictions"][0]) == {"score", "label"}


def test_model_that_raises_is_500_and_the_server_keeps_serving(start_server: StartServer,
                                                               model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"])
    boom = server.post("/invocations", json.dumps(split([[13, 0, 0, 0, 0]])))
    assert boom.status_code == 500
    assert boom.json()["error_code"] == "MODEL_ERROR" and "thirteen" not in boom.json()["message"], \
        "the model's exception text stays in the server log"
    error_id = boom.json()["message"].split("error id ")[1].split(")")[0]
    wait_for(lambda: f"[error id {error_id}]: RuntimeError: thirteen is unlucky" in server.logs(), 5,
             "the error id and the exception in the log")
    ok = server.post("/invocations", json.dumps(split([[2, 0, 0, 0, 0]])))
    assert ok.status_code == 200 and ok.json() == {"predictions": [20.0]}
    # in a batch, only the culprit fails
    bodies = [split([[13 if i == 3 else i, 0, 0, 0, 0]]) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda b: server.post("/invocations", json.dumps(b)).status_code, bodies))
    assert statuses == [200, 200, 200, 500, 200, 200, 200, 200]


def test_expose_errors_puts_the_exception_text_into_the_answer(start_server: StartServer,
                                                                model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"], env={"MODELPILOT_EXPOSE_ERRORS": "true"})
    boom = server.post("/invocations", json.dumps(split([[13, 0, 0, 0, 0]])))
    assert boom.status_code == 500 and "RuntimeError: thirteen is unlucky" in boom.json()["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        pytest.param(b"{bad", "application/json", 400, "not valid JSON", id="malformed-json"),
        pytest.param(b"", "application/json", 400, "empty request body", id="empty-body"),
        pytest.param(b"[1, 2]", "application/json", 400, "JSON dictionary", id="json-list"),
        pytest.param(b'{"foo": 1}', "application/json", 400, "", id="unknown-format"),
        pytest.param(b'{"dataframe_split": 5}', "application/json", 400, "", id="split-not-object"),
        pytest.param(b"hello", "text/plain", 415, "Content-Type", id="text-plain"),
        pytest.param(b"{}", "application/json; charset=latin-1", 415, "UTF-8", id="charset"),
        pytest.param(b"{}", "", 415, "Content-Type", id="no-content-type"),
    ],
)
def test_bad_input_gets_a_clear_json_answer(sklearn_server: Server, body: bytes, content_type: str, status: int,
                                            says: str) -> None:
    r = requests.post(sklearn_server.url + "/invocations", data=body, headers={"Content-Type": content_type},
                      timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert says in r.json()["message"]
    assert "Traceback" not in r.text


def test_body_over_the_limit_is_413(sklearn_server: Server) -> None:
    big = json.dumps(split([one(0)] * 230_000)).encode()  # ~10 MB against a 1 MB limit
    assert len(big) > 9_000_000
    r = sklearn_server.post("/invocations", big)
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    # chunked upload without Content-Length is cut off too
    r = requests.post(sklearn_server.url + "/invocations", data=iter([big[i:i + 65536] for i in
                      range(0, len(big), 65536)]), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_routes_and_methods(sklearn_server: Server) -> None:
    assert requests.get(sklearn_server.url + "/nope", timeout=5).status_code == 404
    assert requests.get(sklearn_server.url + "/invocations", timeout=5).status_code == 405
    assert requests.get(sklearn_server.url + "/ping", timeout=5).status_code == 200
    assert requests.get(sklearn_server.url + "/health", timeout=5).status_code == 200
    import mlflow

    assert requests.get(sklearn_server.url + "/version", timeout=5).text == mlflow.__version__


def test_open_inference_protocol_v2(sklearn_server: Server) -> None:
    base = sklearn_server.url + "/v2"
    assert requests.get(base + "/health/live", timeout=5).json() == {"live": True}
    assert requests.get(base + "/health/ready", timeout=5).status_code == 200
    assert requests.get(base + "/models/rf/ready", timeout=5).json() == {"name": "rf", "ready": True}
    meta = requests.get(base + "/models/rf", timeout=5).json()
    assert meta["name"] == "rf" and meta["versions"] == ["1"] and meta["platform"] == "mlflow"
    assert [i["name"] for i in meta["inputs"]] == COLUMNS and meta["inputs"][0]["datatype"] == "FP64"
    assert "sklearn" in meta["parameters"]["flavors"]
    rows = ROWS.iloc[20:23]
    infer = {"id": "req-1", "inputs": [{"name": c, "shape": [3], "datatype": "FP64", "data": list(rows[c])}
                                       for c in COLUMNS]}
    r = requests.post(base + "/models/rf/infer", json=infer, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "rf" and out["model_version"] == "1" and out["id"] == "req-1"
    expected = sklearn_server.post("/invocations", json.dumps(split(rows.to_numpy().tolist()))).json()
    assert out["outputs"][0]["data"] == expected["predictions"]
    assert out["outputs"][0]["shape"] == [3] and out["outputs"][0]["datatype"] == "INT64"
    assert requests.post(base + "/models/rf/versions/1/infer", json=infer, timeout=10).status_code == 200
    assert requests.post(base + "/models/other/infer", json=infer, timeout=10).status_code == 404
    bad = {"inputs": [{"name": "f0", "shape": [2], "datatype": "FP64", "data": [1.0]}]}
    r = requests.post(base + "/models/rf/infer", json=bad, timeout=10)
    assert r.status_code == 400 and "needs 2 values" in r.json()["message"]
    empty = {"inputs": [{"name": "f0", "shape": [0, 0], "datatype": "FP64", "data": []}]}  # found by the fuzzer
    r = requests.post(base + "/models/rf/infer", json=empty, timeout=10)
    assert r.status_code == 400 and "sizes >= 1" in r.json()["message"]


def test_onnx_model_runs_through_onnxruntime(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    import onnxruntime as ort

    server = start_server(model_dirs["onnx"], "--model-name", "lr")
    meta = requests.get(server.url + "/v2/models/lr", timeout=5).json()
    assert "onnx" in meta["parameters"]["flavors"]
    assert "CPUExecutionProvider" in meta["parameters"]["onnxruntime_providers"]
    x = ROWS.iloc[:4].to_numpy().astype(np.float32)
    r = server.post("/invocations", json.dumps({"inputs": x.tolist()}))
    assert r.status_code == 200, r.text
    session = ort.InferenceSession(str(model_dirs["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    direct = session.run(None, {name: x})
    assert r.json()["predictions"]["label"] == direct[0].tolist()
    # concurrent tensor requests are batched and split back
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: server.post("/invocations", json.dumps({"inputs": x[i:i + 1].tolist()})).json(),
                             range(4)))
    assert [o["predictions"]["label"][0] for o in outs] == direct[0].tolist()


def test_metrics(sklearn_server: Server) -> None:
    sklearn_server.post("/invocations", PAYLOADS["split-1"])
    sklearn_server.post("/invocations", "{bad")
    text = requests.get(sklearn_server.url + "/metrics", timeout=5).text
    labels = 'endpoint="invocations",model="rf",version="1"'
    assert f'modelpilot_requests_total{{code="200",{labels}}}' in text
    assert f'modelpilot_requests_total{{code="400",{labels}}}' in text
    assert 'modelpilot_request_duration_seconds_bucket{endpoint="invocations",le="0.005",model="rf",version="1"}' \
        in text
    assert 'modelpilot_batch_size_rows_bucket{le="1.0",model="rf",version="1"}' in text
    assert 'modelpilot_requests_in_flight{model="rf",version="1"}' in text
    assert float(_metric(sklearn_server, "modelpilot_model_load_seconds")) > 0


def test_readiness_waits_for_the_model_and_liveness_does_not(start_server: StartServer,
                                                            model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"], env={"FLAKY_LOAD_SECONDS": "8"}, wait=False)
    server.wait("/v2/health/live", timeout=60)
    assert requests.get(server.url + "/ping", timeout=5).status_code == 503
    r = requests.get(server.url + "/v2/health/ready", timeout=5)
    assert r.status_code == 503 and "loading" in r.json()["message"]
    assert server.post("/invocations", json.dumps(split([one(0)]))).status_code == 503
    server.wait("/v2/health/ready", timeout=60)


def test_readiness_waits_for_the_warm_up_on_the_input_example(start_server: StartServer,
                                                              model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The model's first predict (on its input example, by the server itself) happens before the pod is
    ready: no user request pays for a cold model."""
    import time

    marker = tmp_path / "predicts"
    server = start_server(model_dirs["warmup"], env={"WARMUP_MARKER": str(marker), "WARMUP_SECONDS": "3"},
                          wait=False)
    server.wait("/v2/health/live", timeout=60)
    saw_unready_while_warming = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        if ready:
            break
        saw_unready_while_warming |= marker.exists()
        time.sleep(0.1)
    else:
        raise AssertionError("never ready")
    ready_at = time.time()
    calls = marker.read_text().splitlines()
    assert len(calls) == 1 and calls[0].split()[1] == "2", "one warm-up predict, on the 2-row input example"
    assert float(calls[0].split()[0]) < ready_at
    assert saw_unready_while_warming, "readiness stayed 503 while the warm-up predict ran"


def test_timeout_is_504(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"], "--request-timeout", "0.3")
    r = server.post("/invocations", json.dumps(split([[99, 0, 0, 0, 0]])))
    assert r.status_code == 504 and r.json()["error_code"] == "TIMEOUT"


def test_sigterm_drains_in_flight_requests(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"])
    results: list[requests.Response] = []
    slow = json.dumps(split([[99, 0, 0, 0, 0]]))
    t = threading.Thread(target=lambda: results.append(server.post("/invocations", slow)))
    t.start()
    wait_for(lambda: _metric(server, "modelpilot_requests_in_flight") == 1, 10, "the request to be in flight")
    os.killpg(server.proc.pid, signal.SIGTERM)  # while the request sleeps inside predict (1 s)
    t.join(10)
    assert results and results[0].status_code == 200 and results[0].json() == {"predictions": [990.0]}
    # uvicorn re-raises the signal once drained, so the exit status reports SIGTERM
    assert server.proc.wait(15) in (0, -signal.SIGTERM)


def test_dependency_mismatch_is_reported_not_fatal(start_server: StartServer, model_dirs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    import shutil

    model = shutil.copytree(model_dirs["sklearn"], tmp_path / "model")
    reqs = (model / "requirements.txt").read_text()
    (model / "requirements.txt").write_text(reqs + "scikit-learn==0.20.0\nno-such-package-xyz==1.0\n")
    server = start_server(model, "--model-name", "dep")
    warnings = requests.get(server.url + "/v2/models/dep", timeout=5).json()["parameters"]["dependency_warnings"]
    assert any("scikit-learn" in w and "0.20.0" in w for w in warnings), warnings
    assert any("no-such-package-xyz" in w and "not installed" in w for w in warnings), warnings
    assert "dependency mismatch" in server.logs().lower()
    assert server.post("/invocations", PAYLOADS["split-1"]).status_code == 200


def _metric(server: Server, name: str) -> float:
    for line in requests.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


@pytest.mark.registry
def test_serves_a_registry_version(start_server: StartServer, registry: Any, model_name: str) -> None:
    """`--model-uri models:/NAME/VERSION` downloads through the tracking server, as the operator's pods do."""
    version = registry.register(model_name, alias="champion")
    server = start_server(f"models:/{model_name}/{version}", env={"MLFLOW_TRACKING_URI": registry.url})
    meta = requests.get(f"{server.url}/v2/models/{model_name}", timeout=5).json()
    assert meta["versions"] == [version]
    payload = {"dataframe_split": {"columns": ["f0", "f1", "f2", "f3"], "data": [[0.1, 0.2, 0.3, 0.4]]}}
    r = server.post("/invocations", json.dumps(payload))
    assert r.status_code == 200 and r.json()["predictions"][0] in (0, 1)


# -- merging only what cannot change an answer ---------------------------------------------------------------
def _centered_answers(server: Server) -> tuple[dict[int, Any], dict[int, Any]]:
    """(answers alone, answers under 32 concurrent clients) of 2-row requests to the x0 - mean(x0) model."""
    def body(i: int) -> str:
        return json.dumps({"dataframe_split": {"columns": ["x0"], "data": [[float(i)], [float(i + 10)]]}})

    alone = {i: server.post("/invocations", body(i)).json() for i in range(32)}
    with ThreadPoolExecutor(32) as pool:
        together = dict(pool.map(lambda i: (i, server.post("/invocations", body(i)).json()), range(32)))
    return alone, together


def test_a_model_that_is_not_row_independent_is_never_merged_by_default(start_server: StartServer,
                                                                          model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["centered"], "--max-batch-delay-ms", "20")
    alone, together = _centered_answers(server)
    assert all(a == {"predictions": [-5.0, 5.0]} for a in alone.values())
    assert together == alone, "answers must not depend on who else was calling"
    assert _calls(server) == _bucket(server, "2.0"), "no predict call held rows of two requests"
    info = requests.get(server.url + "/v2/models/centered", timeout=5).json()
    assert info["parameters"]["batching"] == "per-request"


def test_merging_is_what_changes_such_answers(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    """--batching-mode always (the operator's spec.runtime.batching.mode: always) merges anyway: the answers
    move, which is why `auto` does not do it for an undeclared custom pyfunc."""
    server = start_server(model_dirs["centered"], "--batching-mode", "always", "--max-batch-delay-ms", "20")
    for _attempt in range(5):
        alone, together = _centered_answers(server)
        if together != alone:
            break
    else:
        raise AssertionError("32 concurrent clients never shared a predict call")
    assert _calls(server) > _bucket(server, "2.0")


def test_a_model_that_declares_row_independence_is_merged(start_server: StartServer,
                                                          model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["centered_declared"], "--max-batch-delay-ms", "20")
    _centered_answers(server)
    assert _calls(server) > _bucket(server, "2.0"), "the declaration lets requests share predict calls"
    info = requests.get(server.url + "/v2/models/centered_declared", timeout=5).json()
    assert info["parameters"]["batching"] == "merged"


def test_built_in_row_wise_flavors_are_merged(sklearn_server: Server) -> None:
    info = requests.get(sklearn_server.url + "/v2/models/rf", timeout=5).json()
    assert info["parameters"]["batching"] == "merged"
