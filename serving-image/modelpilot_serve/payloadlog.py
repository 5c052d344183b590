"""Payload logging: sampled requests and their responses sent to a sink as CloudEvents, never in the way.

The events are those of KServe's inference logger (binary-mode CloudEvents over HTTP POST), so its
consumers work unchanged: for each sampled request, one `org.kubeflow.serving.inference.request`
event with the request body and one `org.kubeflow.serving.inference.response` event with the
response body, both with the request's id as `ce-id` (the `X-Request-Id` header, else a new UUID),
`ce-inferenceservicename` (the model), `ce-namespace`, `ce-component` (the track: stable or canary)
and `ce-endpoint`. modelpilot adds `ce-modelversion`, and on the response `ce-statuscode` and
`ce-latencyms`.

The event loop only samples and appends to a bounded queue (microseconds). One sender thread per
worker sends the events in order over a kept-alive connection (sinkconn.py: a few tens of µs of CPU
per POST, where a general HTTP client costs several times that on the GIL the predictions share).
The sender keeps to a CPU budget (`cpu_share` of one core, measured as its own thread's CPU time):
past it, it pauses, its queue fills and further exchanges are dropped. When the queue is full (a slow
or absent sink, or more traffic than the budget sends) an exchange is dropped and counted, and a
failed send is counted too: predictions never wait for the sink, and the log never takes more than
its share of the process from them.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import metrics
from .sinkconn import SinkConnection

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SEND_TIMEOUT_SECONDS = 2.0


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
    at: datetime


class PayloadLogger:
    def __init__(self, url: str, sample_rate: float, capacity: int, model: str, version: str, namespace: str,
                 track: str, cpu_share: float = 0.05) -> None:
        self.url = url
        self.sample_rate = sample_rate
        self.cpu_share = min(max(cpu_share, 1e-4), 1.0)
        self.model, self.version, self.namespace, self.track = model, version, namespace, track
        self._queue: queue.Queue[Exchange | None] = queue.Queue(maxsize=max(1, capacity))
        self._sink = SinkConnection(url, SEND_TIMEOUT_SECONDS)
        self._source = f"modelpilot/{namespace}/{model}/{track}" if namespace else f"modelpilot/{model}"
        self._sent = metrics.PAYLOAD_LOG_SENT.labels(model, version)
        self._dropped = {reason: metrics.PAYLOAD_LOG_DROPPED.labels(model, version, reason)
                         for reason in ("queue_full", "send_failed")}
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def offer(self, make: Callable[[], Exchange]) -> None:
        """Queue the exchange `make` builds for the sink, or drop it (counted) when the queue is full: then it
        is not even built (ids, timestamps). Never blocks."""
        if self._queue.full():
            self._dropped["queue_full"].inc()
            return
        try:
            self._queue.put_nowait(make())
        except queue.Full:  # filled meanwhile by another thread (none today: the event loop offers)
            self._dropped["queue_full"].inc()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        budget = Budget(self.cpu_share)
        while True:
            exchange = self._queue.get()
            if exchange is None:
                return
            budget.wait()
            started = time.thread_time()
            try:
                self._post(exchange, REQUEST_TYPE, exchange.request, exchange.request_type, {})
                self._post(exchange, RESPONSE_TYPE, exchange.response, "application/json",
                           {"ce-statuscode": str(exchange.status), "ce-latencyms": f"{exchange.latency_ms:.3f}"})
                self._sent.inc()
            except Exception as exc:  # the sink's trouble is counted and logged, never raised
                self._dropped["send_failed"].inc()
                log.warning("Payload log: sending to the sink failed (%s)", type(exc).__name__)
            budget.spend(time.thread_time() - started)

    def _post(self, exchange: Exchange, type_: str, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        headers = {
            "ce-specversion": "1.0", "ce-id": exchange.request_id, "ce-type": type_, "ce-source": self._source,
            "ce-time": exchange.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ce-inferenceservicename": self.model, "ce-namespace": self.namespace, "ce-component": self.track,
            "ce-endpoint": exchange.endpoint, "ce-modelversion": self.version,
            "content-type": content_type or "application/json", **extra,
        }
        status = self._sink.post(headers, body)
        if status >= 300:
            raise RuntimeError(f"HTTP {status}")


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


def request_id(header: str | None) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new UUID."""
    if header and len(header) <= 128 and header.isascii() and header.isprintable():
        return header
    return str(uuid.uuid4())


def now() -> datetime:
    return datetime.now(UTC)
