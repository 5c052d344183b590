"""The payload log's sender: a child process of each worker that sends the exchanges to the sink.

A process rather than a thread: a sender thread shares the worker's GIL, and each of its socket calls
hands the GIL back and forth with the thread serving predictions; at thousands of POSTs a second those
hand-offs cost the predictions several times the sender's own CPU time. The worker writes frames into
this process's stdin (a pipe; payloadlog.py); this process POSTs them as CloudEvents over one
kept-alive connection, keeps to its CPU budget, and reports its running totals on stdout as lines
`<sent> <failed> <bytes done>` a few times a second. It ends when its stdin ends (the worker stopped,
or died): what it had read is still sent. SIGTERM and SIGINT are ignored, so a signal to the whole
process group does not lose what is queued.

A frame is FRAME's fixed header (the lengths of the five byte fields, the answer's status, the latency
in ms, the request's time as a UNIX timestamp) followed by the request id, the endpoint, the request's
content type, the request body and the response body.
"""

from __future__ import annotations

import json
import logging
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from .sinkconn import SinkConnection

log = logging.getLogger("modelpilot_serve.payloadsender")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SEND_TIMEOUT_SECONDS = 2.0
REPORT_SECONDS = 0.1
FRAME = struct.Struct("!HHHIIHdd")


@dataclass(frozen=True)
class Exchange:
    """One request and its answer, as the sink will see them."""

    request_id: str
    endpoint: str
    request: bytes
    request_type: str
    response: bytes
    status: int
    latency_ms: float
    at: float

    def frame(self) -> list[bytes]:
        """The frame's parts, to write in order (the bodies are not copied)."""
        rid, endpoint, ctype = (s.encode("utf-8", "replace") for s in (self.request_id, self.endpoint,
                                                                       self.request_type))
        head = FRAME.pack(len(rid), len(endpoint), len(ctype), len(self.request), len(self.response),
                          self.status, self.latency_ms, self.at)
        return [head + rid + endpoint + ctype, self.request, self.response]


def read_exchange(stream: BinaryIO) -> Exchange | None:
    """The next frame of `stream`, or None at its end."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    n_id, n_endpoint, n_type, n_request, n_response, status, latency_ms, at = FRAME.unpack(head)
    rest = stream.read(n_id + n_endpoint + n_type + n_request + n_response)
    if len(rest) < n_id + n_endpoint + n_type + n_request + n_response:
        return None
    parts, start = [], 0
    for n in (n_id, n_endpoint, n_type, n_request, n_response):
        parts.append(rest[start:start + n])
        start += n
    rid, endpoint, ctype, request, response = parts
    return Exchange(rid.decode("utf-8", "replace"), endpoint.decode("utf-8", "replace"), request,
                    ctype.decode("utf-8", "replace"), response, status, latency_ms, at)


class Budget:
    """A token bucket of CPU seconds: `share` of one core accrues with wall time, up to one second's worth;
    `wait` sleeps while it is overdrawn."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.share, self.clock, self.sleep = share, clock, sleep
        self.tokens, self.last = share, clock()

    def _accrue(self) -> None:
        now = self.clock()
        self.tokens = min(self.share, self.tokens + self.share * (now - self.last))
        self.last = now

    def wait(self) -> None:
        self._accrue()
        if self.tokens < 0:
            self.sleep(-self.tokens / self.share)
            self._accrue()

    def spend(self, cpu_seconds: float) -> None:
        self.tokens -= cpu_seconds


class Sender:
    def __init__(self, url: str, cpu_share: float, model: str, version: str, namespace: str, track: str) -> None:
        self.sink = SinkConnection(url, SEND_TIMEOUT_SECONDS)
        self.budget = Budget(min(max(cpu_share, 1e-4), 1.0))
        self.model, self.version, self.namespace, self.track = model, version, namespace, track
        self.source = f"modelpilot/{namespace}/{model}/{track}" if namespace else f"modelpilot/{model}"
        self.sent = self.failed = self.done_bytes = 0
        self._lock = threading.Lock()
        self._last_warning = 0.0

    def send(self, exchange: Exchange) -> None:
        self.budget.wait()
        started = time.process_time()
        ok = False
        try:  # both events in one write (pipelined), their answers read in order
            statuses = self.sink.post_many([
                self._event(exchange, REQUEST_TYPE, exchange.request, exchange.request_type, {}),
                self._event(exchange, RESPONSE_TYPE, exchange.response, "application/json",
                            {"ce-statuscode": str(exchange.status), "ce-latencyms": f"{exchange.latency_ms:.3f}"})])
            if max(statuses) >= 300:
                raise RuntimeError(f"HTTP {max(statuses)}")
            ok = True
        except Exception as exc:  # the sink's trouble is counted and logged (at most every 10 s), never raised
            if time.monotonic() - self._last_warning > 10:
                self._last_warning = time.monotonic()
                log.warning("Payload log: sending to the sink failed (%s)", type(exc).__name__)
        with self._lock:
            self.sent += ok
            self.failed += not ok
            self.done_bytes += len(exchange.request) + len(exchange.response)
        self.budget.spend(time.process_time() - started)

    def totals(self) -> tuple[int, int, int]:
        with self._lock:
            return self.sent, self.failed, self.done_bytes

    def _event(self, exchange: Exchange, type_: str, body: bytes, content_type: str, extra: dict[str, str]
               ) -> tuple[dict[str, str], bytes]:
        headers = {
            "ce-specversion": "1.0", "ce-id": exchange.request_id, "ce-type": type_, "ce-source": self.source,
            "ce-time": datetime.fromtimestamp(exchange.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ce-inferenceservicename": self.model, "ce-namespace": self.namespace, "ce-component": self.track,
            "ce-endpoint": exchange.endpoint, "ce-modelversion": self.version,
            "content-type": content_type or "application/json", **extra,
        }
        return headers, body


def main(argv: list[str] | None = None) -> int:
    """`python -m modelpilot_serve.payloadsender '<json config>'`: frames on stdin, totals on stdout."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    logging.basicConfig(level=config.get("log_level", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sender = Sender(config["url"], config["cpu_share"], config["model"], config["version"], config["namespace"],
                    config["track"])
    out = sys.stdout.buffer
    stop = threading.Event()

    def report() -> None:
        last = None
        while True:
            stopping = stop.wait(REPORT_SECONDS)
            totals = sender.totals()
            if totals != last:
                out.write(f"{totals[0]} {totals[1]} {totals[2]}\n".encode())
                out.flush()
                last = totals
            if stopping:
                return

    reporter = threading.Thread(target=report, name="report", daemon=True)
    reporter.start()
    try:
        while (exchange := read_exchange(sys.stdin.buffer)) is not None:
            sender.send(exchange)
    finally:
        stop.set()
        reporter.join(5)
        sender.sink.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the worker is gone: nobody to report to
        sys.exit(0)
