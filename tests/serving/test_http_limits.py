"""HTTP limits over real sockets: header size, slow headers, idle and slow connections, caps.

Run against a real `modelpilot-serve` process, as a hostile or broken client would meet it.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS

ONE = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[0.1, 0.2, 0.3, 0.4, 0.5]]}})


def raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(data)
        out = b""
        try:
            while chunk := conn.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def rss_mib(server: Server) -> float:
    """The serving process's resident memory (it is the one worker)."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


@pytest.fixture(scope="module")
def guarded(start_server: StartServer, model_dirs: dict[str, Path]) -> Server:
    return start_server(model_dirs["sklearn"], "--header-timeout", "2", "--max-connections", "1500",
                        "--keep-alive-timeout", "2")


def test_huge_headers_are_431_and_cost_no_memory(guarded: Server) -> None:
    before = rss_mib(guarded)
    header = b"X-Big: " + b"a" * (8 * 2**20) + b"\r\n"
    answers = []
    for _ in range(4):
        answers.append(raw(guarded.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"))
    assert all(a.startswith(b"HTTP/1.1 431") for a in answers), answers[0][:200]
    assert b"HEADERS_TOO_LARGE" in answers[0]
    assert rss_mib(guarded) - before < 50
    assert guarded.post("/invocations", ONE).status_code == 200


def test_headers_that_never_finish_are_408(guarded: Server) -> None:
    started = time.monotonic()
    answer = raw(guarded.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 1.8 <= time.monotonic() - started <= 4


def test_a_connection_that_sends_nothing_is_closed(guarded: Server) -> None:
    started = time.monotonic()
    answer = raw(guarded.port, b"", wait=10)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    assert time.monotonic() - started <= 4


def test_slowloris_leaves_normal_requests_fast_and_memory_bounded(guarded: Server) -> None:
    """1,000 connections that stay idle or trickle headers: other clients barely notice."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))

    def latencies(n: int) -> list[float]:
        out = []
        with requests.Session() as s:
            for _ in range(n):
                t = time.perf_counter()
                assert s.post(guarded.url + "/invocations", data=ONE,
                              headers={"Content-Type": "application/json"}, timeout=10).status_code == 200
                out.append(time.perf_counter() - t)
        return sorted(out)

    unloaded = latencies(200)
    before = rss_mib(guarded)
    conns = []
    for i in range(1000):
        c = socket.create_connection(("127.0.0.1", guarded.port))
        if i % 2:
            c.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # trickles, never finishes
        conns.append(c)
    try:
        loaded = latencies(200)
        peak = rss_mib(guarded)
    finally:
        for c in conns:
            c.close()
    p99 = lambda xs: xs[int(len(xs) * 0.99) - 1]  # noqa: E731
    print(f"p99 unloaded {p99(unloaded) * 1000:.1f} ms, with 1,000 slow connections {p99(loaded) * 1000:.1f} ms; "
          f"RSS {before:.0f} → {peak:.0f} MiB")
    assert p99(loaded) <= 2 * p99(unloaded) + 0.002
    assert peak - before < 100
    # the slow ones were cut at the header timeout; the server still answers
    time.sleep(2.5)
    assert guarded.post("/invocations", ONE).status_code == 200
    assert statistics.median(latencies(20)) < 0.1


def test_past_the_connection_cap_new_connections_get_503_with_retry_after(
        start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["sklearn"], "--max-connections", "20", "--header-timeout", "30")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        answer = raw(server.port, b"")
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer
    finally:
        for c in held:
            c.close()
    time.sleep(0.5)
    assert server.post("/invocations", ONE).status_code == 200


def test_past_the_in_flight_cap_predictions_get_503_with_retry_after(
        start_server: StartServer, model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["flaky"], "--max-in-flight", "2")
    slow = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[99, 0, 0, 0, 0]]}})
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: server.post("/invocations", slow), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error_code"] == "OVERLOADED"
