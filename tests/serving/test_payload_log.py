"""Payload logging into a real HTTP receiver process: every sampled request arrives once, in order, with
the right version and track; with the receiver down or slow, predictions are unaffected and drops counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from hack.proc import REPO, free_port, wait_for
from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS


class Sink:
    def __init__(self, out: Path, delay: float = 0.0) -> None:
        self.port, self.out = free_port(), out
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.serving.sink", "--port", str(self.port),
                                      "--out", str(out), "--delay", str(delay)], cwd=REPO)
        wait_for(lambda: requests.post(self.url, data=b"", timeout=2).status_code == 202, 30, "the sink")
        out.write_text("")  # forget the readiness check's event

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path / "events.jsonl")
    yield s
    s.stop()


def body(i: int) -> str:
    return json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[i / 10 + k for k in range(len(COLUMNS))]]}})


def metric(server: Server, name: str, *labels: str) -> float:
    """The sum of a metric's series whose labels include `labels` (e.g. 'reason="queue_full"')."""
    total = 0.0
    for line in requests.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start(start_server: StartServer, model: Path, url: str, *flags: str) -> Server:
    return start_server(model, "--model-name", "fraud", "--model-version", "7", "--namespace", "team-a",
                        "--track", "canary", "--payload-log-url", url, *flags)


def test_every_request_and_response_arrives_once_in_order_with_version_and_track(
        start_server: StartServer, model_dirs: dict[str, Path], sink: Sink) -> None:
    server = start(start_server, model_dirs["sklearn"], sink.url)
    answers = []
    with requests.Session() as client:  # one connection, as an application with keep-alive calls
        for i in range(40):
            resp = client.post(server.url + "/invocations", data=body(i), timeout=10,
                               headers={"Content-Type": "application/json", "X-Request-Id": f"req-{i}"})
            answers.append((resp.status_code, resp.text))
        bad = client.post(server.url + "/invocations", data="{not json", timeout=10,
                          headers={"Content-Type": "application/json", "X-Request-Id": "req-bad"})
    assert {code for code, _ in answers} == {200} and bad.status_code == 400
    wait_for(lambda: len(sink.events()) >= 82, 30, "82 events at the sink")
    wait_for(lambda: metric(server, "modelpilot_payload_log_sent_total") == 41, 10, "41 sent")
    events = sink.events()
    assert len(events) == 82, "each request once: a request event and a response event"
    ids = [e["headers"]["ce-id"] for e in events]
    assert ids == [rid for i in [*map(str, range(40)), "bad"] for rid in (f"req-{i}",) * 2], "in order"
    for n, event in enumerate(events):
        h = event["headers"]
        assert h["ce-specversion"] == "1.0"
        assert h["ce-type"] == ("org.kubeflow.serving.inference.request" if n % 2 == 0
                                else "org.kubeflow.serving.inference.response")
        assert (h["ce-inferenceservicename"], h["ce-modelversion"]) == ("fraud", "7")
        assert (h["ce-namespace"], h["ce-component"], h["ce-endpoint"]) == ("team-a", "canary", "invocations")
    requests_, responses = events[0::2], events[1::2]
    assert [e["body"] for e in requests_[:40]] == [body(i) for i in range(40)]
    assert [(int(e["headers"]["ce-statuscode"]), e["body"]) for e in responses[:40]] == answers
    assert responses[40]["headers"]["ce-statuscode"] == "400" and requests_[40]["body"] == "{not json"
    assert float(responses[0]["headers"]["ce-latencyms"]) > 0
    assert metric(server, "modelpilot_payload_log_dropped_total") == 0


def test_a_sample_rate_logs_about_that_share(start_server: StartServer, model_dirs: dict[str, Path],
                                             sink: Sink) -> None:
    server = start(start_server, model_dirs["sklearn"], sink.url, "--payload-log-sample-rate", "0.25")
    with requests.Session() as client:
        for i in range(400):
            assert client.post(server.url + "/invocations", data=body(i), timeout=10,
                               headers={"Content-Type": "application/json"}).status_code == 200
    counts: list[tuple[float, int]] = []

    def settled() -> bool:  # the sender works behind the answers: wait until it has caught up
        counts.append((metric(server, "modelpilot_payload_log_sent_total"), len(sink.events())))
        return len(counts) > 1 and counts[-1] == counts[-2] and counts[-1][0] > 0

    wait_for(settled, 30, "the sender to catch up", interval=1.0)
    sent, events = counts[-1]
    assert 60 <= sent <= 140, sent  # 100 expected; ±4 standard deviations
    assert events == 2 * sent, "each sampled request: a request event and a response event"


@pytest.mark.parametrize("trouble", ["down", "slow"])
def test_a_sink_that_is_down_or_slow_never_touches_predictions_and_drops_are_counted(
        start_server: StartServer, model_dirs: dict[str, Path], tmp_path: Path, trouble: str) -> None:
    slow = Sink(tmp_path / "slow.jsonl", delay=0.5) if trouble == "slow" else None
    url = slow.url if slow else f"http://127.0.0.1:{free_port()}/events"  # nothing listens there
    try:
        server = start(start_server, model_dirs["sklearn"], url, "--payload-log-queue", "10")

        def call(i: int) -> int:
            return requests.post(server.url + "/invocations", data=body(i), timeout=10,
                                 headers={"Content-Type": "application/json"}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(300)))
        assert codes == [200] * 300
        full = metric(server, "modelpilot_payload_log_dropped_total", 'reason="queue_full"')
        failed = metric(server, "modelpilot_payload_log_dropped_total", 'reason="send_failed"')
        if trouble == "down":  # refused at once: every send fails, the queue never fills
            assert metric(server, "modelpilot_payload_log_sent_total") == 0 and failed > 0
        else:
            assert full > 0, "2 events a second cannot keep up: a queue of 10 overflows"
        wait_for(lambda: (metric(server, "modelpilot_payload_log_sent_total")
                          + metric(server, "modelpilot_payload_log_dropped_total")) == 300, 30,
                 "every sampled request sent or counted as dropped")
    finally:
        if slow:
            slow.stop()


def test_past_its_cpu_share_the_sender_pauses_and_the_rest_is_dropped_and_counted(
        start_server: StartServer, model_dirs: dict[str, Path], sink: Sink) -> None:
    """A sender that keeps up with any traffic takes the GIL from the predictions: it keeps to its budget."""
    server = start(start_server, model_dirs["sklearn"], sink.url, "--payload-log-cpu-share", "0.001",
                   "--payload-log-queue", "5")

    def call(i: int) -> int:
        return requests.post(server.url + "/invocations", data=body(i), timeout=10,
                             headers={"Content-Type": "application/json"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(400))) == [200] * 400
    wait_for(lambda: (metric(server, "modelpilot_payload_log_sent_total")
                      + metric(server, "modelpilot_payload_log_dropped_total")) == 400, 30, "every exchange accounted")
    sent = metric(server, "modelpilot_payload_log_sent_total")
    assert 0 < sent < 200, sent  # 1 ms of CPU a second sends a few dozen; the queue of 5 drops the rest
    assert metric(server, "modelpilot_payload_log_dropped_total", 'reason="queue_full"') == 400 - sent


def test_the_budget_sleeps_off_what_was_overdrawn() -> None:
    from modelpilot_serve.payloadsender import Budget

    now, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = Budget(0.05, clock=lambda: now[0], sleep=sleep)
    budget.wait()
    budget.spend(0.04)
    budget.wait()
    assert slept == [], "one second's worth may be spent at once"
    budget.spend(0.03)  # 0.02 overdrawn: 0.4 s at 5 % of a core
    budget.wait()
    assert slept == [pytest.approx(0.4)]
    now[0] += 100
    budget.wait()
    assert budget.tokens == pytest.approx(0.05), "never more than one second's worth"


def _senders(server: Server) -> list[int]:
    """The pids of the payload-log sender processes under `server`'s process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            pid = int(entry)
            while pid > 1:  # is the server an ancestor?
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == server.proc.pid:
                    break
        except (OSError, ValueError, IndexError):
            continue
        if pid == server.proc.pid and b"modelpilot_serve.payloadsender" in cmdline:
            found.append(int(entry))
    return found


def test_a_sender_process_that_dies_is_counted_and_started_again(
        start_server: StartServer, model_dirs: dict[str, Path], sink: Sink) -> None:
    """The sender is a child process of the worker (off the worker's GIL): killed, its exchanges on the way
    are counted as failed, predictions go on, and a new sender takes over."""
    server = start(start_server, model_dirs["sklearn"], sink.url)

    def call(i: int) -> int:
        return requests.post(server.url + "/invocations", data=body(i), timeout=10,
                             headers={"Content-Type": "application/json"}).status_code

    assert [call(i) for i in range(10)] == [200] * 10
    wait_for(lambda: metric(server, "modelpilot_payload_log_sent_total") == 10, 10, "10 sent")
    (first,) = _senders(server)
    os.kill(first, signal.SIGKILL)
    assert [call(i) for i in range(10, 30)] == [200] * 20, "predictions never wait for the sender"
    wait_for(lambda: metric(server, "modelpilot_payload_log_dropped_total", 'reason="send_failed"') > 0, 10,
             "the exchanges of the dead sender counted")
    time.sleep(10.5)  # a new sender is started at most every 10 s
    assert [call(i) for i in range(30, 40)] == [200] * 10
    wait_for(lambda: metric(server, "modelpilot_payload_log_sent_total") >= 11, 10, "the new sender sends")
    wait_for(lambda: (metric(server, "modelpilot_payload_log_sent_total")
                      + metric(server, "modelpilot_payload_log_dropped_total")) == 40, 10, "every exchange accounted")
    (second,) = _senders(server)
    assert second != first
    assert "the sender process ended" in server.logs()


@given(st.text(max_size=40), st.text(max_size=20), st.binary(max_size=300), st.text(max_size=40),
       st.binary(max_size=300), st.integers(0, 65535), st.floats(0, 1e6), st.floats(0, 4e9))
def test_a_frame_reads_back_as_the_exchange_it_was_made_of(
        request_id: str, endpoint: str, request: bytes, request_type: str, response: bytes, status: int,
        latency_ms: float, at: float) -> None:
    import io

    from modelpilot_serve.payloadsender import Exchange, read_exchange

    surrogate_free = [s.encode("utf-8", "replace").decode("utf-8") for s in (request_id, endpoint, request_type)]
    exchange = Exchange(surrogate_free[0], surrogate_free[1], request, surrogate_free[2], response, status,
                        latency_ms, at)
    stream = io.BytesIO(b"".join(exchange.frame()) * 2)
    assert read_exchange(stream) == exchange and read_exchange(stream) == exchange
    assert read_exchange(stream) is None
