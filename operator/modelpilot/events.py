"""Events are written off the reconcile's path, as client-go's event recorder writes them.

A reconcile decides which Events to record (`VersionChanged`, `Resolved`, canary steps), but nobody
waits for one: the status it writes already says what happened. So `EventRecorder.create_event` only
queues the Event, and two writer threads post the queue as it fills (each Event carries the time of
the reconcile that decided it, so which thread writes first does not reorder them). When the API
server is slow (a thousand ModelDeployments moving to a new version at once), the reconciles go on
applying Deployments and writing statuses instead of each waiting for an Event's answer first.

Best effort, like every Kubernetes Event: when the queue is full the newest is dropped (counted in
`modelpilot_events_dropped_total`, logged), a refused write is logged, and what is still queued when
the process stops is written for a moment more, then given up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Protocol

from . import metrics

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def create_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                     component: str, now: str) -> None: ...


#: (involved, type, reason, message, component, now), or None: stop.
_Item = tuple[dict[str, Any], str, str, str, str, str] | None


class EventRecorder:
    """`create_event` that returns at once; `writers` threads write the queued Events."""

    def __init__(self, sink: EventSink, capacity: int = 10_000, writers: int = 2) -> None:
        self.sink = sink
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=capacity)
        self._writers = writers
        self._threads: list[threading.Thread] = []
        self._dropped_logged = 0.0

    def start(self) -> EventRecorder:
        for i in range(self._writers - len(self._threads)):
            thread = threading.Thread(target=self._write, name=f"events-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def create_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                     component: str, now: str) -> None:
        """Queue one Event on `involved` (only its identity is kept, not the whole object)."""
        meta = involved["metadata"]
        slim = {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}}
        try:
            self._queue.put_nowait((slim, type_, reason, message, component, now))
        except queue.Full:
            metrics.EVENTS_DROPPED.inc()
            if time.monotonic() - self._dropped_logged > 60:  # one line a minute, not one per event
                self._dropped_logged = time.monotonic()
                log.warning("The Event queue is full (%d): dropped %s on %s/%s", self._queue.maxsize, reason,
                            meta.get("namespace"), meta.get("name"))

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued for up to `timeout` seconds, then stop the writers."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Full:
                break  # the writers are daemons: they end with the process
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        self._threads = [t for t in self._threads if t.is_alive()]

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.sink.create_event(*item)
            except Exception:  # never lose the writer: the next Event may go through
                log.exception("Writing event %s failed", item[2])
