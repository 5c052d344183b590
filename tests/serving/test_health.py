"""The probe process's verdict from worker heartbeats (pure), and the process over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from modelpilot_serve.health import Heartbeat, Worker, read_workers, verdict
from tests.serving.conftest import StartServer


@pytest.mark.parametrize(
    ("workers", "live", "ready"),
    [
        pytest.param([], True, False, id="starting"),
        pytest.param([Worker(0.1, True)], True, True, id="ready"),
        pytest.param([Worker(0.1, False)], True, False, id="loading"),
        pytest.param([Worker(6, True)], True, False, id="loop-stalled-6s"),
        pytest.param([Worker(31, True)], False, False, id="loop-wedged-31s"),
        pytest.param([Worker(0.1, True), Worker(6, True)], True, False, id="one-of-two-stalled"),
        pytest.param([Worker(0.1, True), Worker(31, True)], True, False, id="one-of-two-wedged"),
    ],
)
def test_verdict(workers: list[Worker], live: bool, ready: bool) -> None:
    assert verdict(workers)[:2] == (live, ready)


def test_heartbeats_round_trip_and_gone_workers_age_out(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path)
    beat.beat(True)
    now = time.time()
    (seen,) = read_workers(tmp_path, now)
    assert seen.ready and seen.age < 1
    assert read_workers(tmp_path, now + 120) == []
    beat.close()
    assert read_workers(tmp_path, now) == []


def test_the_probe_process_follows_the_server(start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"], env={"FLAKY_LOAD_SECONDS": "3"}, wait=False)
    deadline = time.monotonic() + 60
    seen = set()
    while time.monotonic() < deadline:
        try:
            r = requests.get(server.health_url + "/v2/health/ready", timeout=2)
        except requests.ConnectionError:
            time.sleep(0.1)
            continue
        seen.add(r.status_code)
        if r.status_code == 200:
            break
        assert "not loaded" in r.json()["message"] or "starting" in r.json()["message"]
        time.sleep(0.2)
    assert seen == {503, 200}, "not ready while the model loads, then ready"
    assert requests.get(server.health_url + "/v2/health/live", timeout=2).status_code == 200
    assert requests.get(server.health_url + "/nope", timeout=2).status_code == 404
    server.stop()
    with pytest.raises(requests.ConnectionError):
        for _ in range(30):  # the probe process leaves with its server
            requests.get(server.health_url + "/v2/health/live", timeout=2)
            time.sleep(0.2)


def test_the_heartbeat_of_a_worker_that_died_is_dropped(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"worker-{dead.stdout.strip()}").write_bytes(b"\0" * 9)
    beat = Heartbeat(tmp_path)
    beat.beat(True)
    assert [w.ready for w in read_workers(tmp_path, time.time())] == [True]
    assert not (tmp_path / f"worker-{dead.stdout.strip()}").exists()
