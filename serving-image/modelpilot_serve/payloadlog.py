"""Payload logging: sampled requests and their responses sent to a sink as CloudEvents, never in the way.

The events are those of KServe's inference logger (binary-mode CloudEvents over HTTP POST), so its
consumers work unchanged: for each sampled request, one `org.kubeflow.serving.inference.request`
event with the request body and one `org.kubeflow.serving.inference.response` event with the
response body, both with the request's id as `ce-id` (the `X-Request-Id` header, else a new UUID),
`ce-inferenceservicename` (the model), `ce-namespace`, `ce-component` (the track: stable or canary)
and `ce-endpoint`. modelpilot adds `ce-modelversion`, and on the response `ce-statuscode` and
`ce-latencyms`.

The event loop only samples and hands the exchange to the worker's sender process (payloadsender.py)
through a non-blocking pipe: frames are queued here and written when the pipe takes them, with one
write for whatever accumulated in a turn of the loop. The sender sends them in order, keeps to a CPU
budget and reports its totals back, which this side adds to the metrics. At most `capacity` exchanges
(and MAX_QUEUED_BYTES of bodies) are on their way at once, here, in the pipe or in the sender: past
that (a slow or absent sink, or more traffic than the budget sends) an exchange is dropped and counted,
and a failed send is counted too. Predictions never wait for the sink, and the log never takes more
than its share of CPU from them, nor the GIL at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from . import metrics
from .payloadsender import Exchange
from .sinkconn import SinkConnection

__all__ = ["Exchange", "PayloadLogger", "now", "request_id"]

log = logging.getLogger(__name__)

#: The most bytes of request and response bodies on their way to the sink, per worker.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: How big the pipe to the sender is asked to be (Linux's F_SETPIPE_SZ; the default is 64 KiB).
PIPE_BYTES = 1024 * 1024
#: A sender process that died is started again at most this often.
RESTART_SECONDS = 10.0
_F_SETPIPE_SZ = 1031


class PayloadLogger:
    def __init__(self, url: str, sample_rate: float, capacity: int, model: str, version: str, namespace: str,
                 track: str, cpu_share: float = 0.03) -> None:
        SinkConnection(url, 1.0)  # a URL it could never send to is refused now, not at the first request
        self.sample_rate = sample_rate
        self.capacity = max(1, capacity)
        self._config = json.dumps({"url": url, "cpu_share": cpu_share, "model": model, "version": version,
                                   "namespace": namespace, "track": track,
                                   "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel())})
        self._sent = metrics.PAYLOAD_LOG_SENT.labels(model, version)
        self._dropped = {reason: metrics.PAYLOAD_LOG_DROPPED.labels(model, version, reason)
                         for reason in ("queue_full", "send_failed")}
        #: frame parts not yet in the pipe (the first may be partly written already)
        self._parts: collections.deque[memoryview] = collections.deque()
        self._handed = self._handed_bytes = 0  # exchanges (and body bytes) given to the sender so far
        self._totals = (0, 0, 0)  # what the sender reported: sent, failed, body bytes done
        self._report = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = -RESTART_SECONDS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = self._flush_soon = self._closed = False

    def start(self) -> None:
        """Start the sender process (on the event loop, before the first request)."""
        self._sender()

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def offer(self, make: Callable[[], Exchange]) -> None:
        """Queue the exchange `make` builds for the sink, or drop it (counted) when too much is on its way:
        then it is not even built (ids, timestamps). Never blocks; called on the event loop."""
        if self._handed - self._totals[0] - self._totals[1] >= self.capacity:
            self._dropped["queue_full"].inc()
            return
        if self._sender() is None:
            self._dropped["send_failed"].inc()
            return
        exchange = make()
        size = len(exchange.request) + len(exchange.response)
        if self._handed_bytes - self._totals[2] + size > MAX_QUEUED_BYTES and self._handed > sum(self._totals[:2]):
            self._dropped["queue_full"].inc()
            return
        self._handed += 1
        self._handed_bytes += size
        self._parts.extend(memoryview(part) for part in exchange.frame() if part)
        if not self._flush_soon and not self._writing and self._loop is not None:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _sender(self) -> subprocess.Popen[bytes] | None:
        """The running sender process, started (again) when needed; None while it cannot be. (Its end is
        noticed when its stdout ends or its stdin breaks: see _lost.)"""
        if self._proc is not None or self._closed:
            return self._proc
        if time.monotonic() - self._started_at < RESTART_SECONDS:
            return None
        self._started_at = time.monotonic()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "modelpilot_serve.payloadsender", self._config],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            log.error("Payload log: the sender process could not start (%s); exchanges are dropped", exc)
            return None
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(proc.stdout.fileno(), self._read_totals, proc)
        self._proc, self._totals, self._handed, self._handed_bytes, self._report = proc, (0, 0, 0), 0, 0, b""
        return proc

    def _lost(self) -> None:
        """The sender died: what it had not reported is lost; count it as failed."""
        if self._proc is None or self._closed:
            return
        proc, self._proc = self._proc, None
        if self._loop is not None and proc.stdout is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(proc.stdout.fileno())
        if self._writing and self._loop is not None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(proc.stdin.fileno())
        self._writing = False
        lost = self._handed - self._totals[0] - self._totals[1]
        if lost > 0:
            self._dropped["send_failed"].inc(lost)
        self._parts.clear()
        self._handed, self._handed_bytes, self._totals = 0, 0, (0, 0, 0)
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        if proc.poll() is None:  # its pipes are gone: nothing more to do for it (never waited for on the loop)
            proc.kill()
        log.error("Payload log: the sender process ended (exit code %s); %d exchanges lost; it is started again "
                  "within %gs", proc.poll(), lost, RESTART_SECONDS)

    def _flush(self) -> None:
        """Write what the pipe takes; wait for it to drain when it is full."""
        self._flush_soon = False
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        fd = proc.stdin.fileno()
        while self._parts:
            offered = list(itertools.islice(self._parts, 64))
            try:
                written = os.writev(fd, offered)
            except BlockingIOError:
                break  # the pipe is full: wait until it takes more
            except OSError:  # the sender is gone (BrokenPipeError)
                self._lost()
                return
            full = written < sum(len(part) for part in offered)
            while written:
                head = self._parts[0]
                if written >= len(head):
                    written -= len(head)
                    self._parts.popleft()
                else:
                    self._parts[0], written = head[written:], 0
            if full:
                break
        want = bool(self._parts)
        if want != self._writing and self._loop is not None:
            (self._loop.add_writer(fd, self._flush) if want else self._loop.remove_writer(fd))
            self._writing = want

    def _read_totals(self, proc: subprocess.Popen[bytes]) -> None:
        """The sender's latest totals (lines `sent failed bytes`), added to the metrics."""
        assert proc.stdout is not None
        try:
            chunk = os.read(proc.stdout.fileno(), 65536)
        except (BlockingIOError, OSError, ValueError):
            return
        if not chunk:  # the sender ended
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(proc.stdout.fileno())
            if proc is self._proc:
                self._lost()
            return
        self._report += chunk
        *lines, self._report = self._report.split(b"\n")
        for line in reversed(lines):
            fields = line.split()
            if len(fields) == 3 and all(f.isdigit() for f in fields):
                sent, failed, done = (int(f) for f in fields)
                if sent > self._totals[0]:
                    self._sent.inc(sent - self._totals[0])
                if failed > self._totals[1]:
                    self._dropped["send_failed"].inc(failed - self._totals[1])
                self._totals = (max(sent, self._totals[0]), max(failed, self._totals[1]), done)
                return

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop the sender."""
        proc, self._closed = self._proc, True
        if proc is None or proc.stdin is None or proc.stdout is None:
            return
        deadline = time.monotonic() + timeout
        while self._parts and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._writing and self._loop is not None:
            self._loop.remove_writer(proc.stdin.fileno())
            self._writing = False
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the sender sends what it read, reports and ends
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)  # the last report, if the reader has not taken it yet
        self._read_totals(proc)
        if proc.poll() is None:
            proc.kill()
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(proc.stdout.fileno())
        proc.stdout.close()
        self._proc = None


def request_id(header: str | None) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new UUID."""
    if header and len(header) <= 128 and header.isascii() and header.isprintable():
        return header
    return str(uuid.uuid4())


def now() -> float:
    return time.time()
