"""The Event recorder: a reconcile never waits for an Event's write, and nothing is lost but by a full queue."""

from __future__ import annotations

import threading
import time
from typing import Any

from modelpilot import metrics
from modelpilot.events import EventRecorder

OBJ = {"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
       "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "labels": {"a": "b"}},
       "spec": {"model": {"uri": "models:/x@y"}}, "status": {"big": "x" * 1000}}


class Sink:
    def __init__(self, fail_on: str = "") -> None:
        self.written: list[tuple[str, str]] = []
        self.involved: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def create_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                     component: str, now: str) -> None:
        self.gate.wait(10)
        if reason == self.fail_on:
            raise RuntimeError("refused")
        self.written.append((reason, message))
        self.involved.append(involved)


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_recording_returns_at_once_while_the_api_server_is_slow_and_events_keep_their_order() -> None:
    sink = Sink()
    sink.gate.clear()  # every write hangs
    recorder = EventRecorder(sink, writers=1).start()
    started = time.monotonic()
    for i in range(50):
        recorder.create_event(OBJ, "Normal", "VersionChanged", f"v{i}", "modelpilot", "now")
    assert time.monotonic() - started < 0.5
    assert sink.written == []
    sink.gate.set()
    wait_until(lambda: len(sink.written) == 50)
    assert [m for _, m in sink.written] == [f"v{i}" for i in range(50)]
    # only the involved object's identity is kept, not its spec or status
    assert sink.involved[0] == {"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
                                "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}}
    recorder.stop()


def test_a_full_queue_drops_the_newest_and_counts_it() -> None:
    sink = Sink()
    sink.gate.clear()
    recorder = EventRecorder(sink, capacity=3, writers=1).start()
    before = metrics.EVENTS_DROPPED._value.get()
    recorder.create_event(OBJ, "Normal", "Resolved", "e0", "modelpilot", "now")
    wait_until(lambda: recorder.pending() == 0)  # the (stuck) writer holds e0
    for i in range(1, 10):  # three wait, the rest do not fit
        recorder.create_event(OBJ, "Normal", "Resolved", f"e{i}", "modelpilot", "now")
    assert metrics.EVENTS_DROPPED._value.get() - before == 6
    sink.gate.set()
    wait_until(lambda: len(sink.written) == 4)
    assert [m for _, m in sink.written] == ["e0", "e1", "e2", "e3"]
    recorder.stop()


def test_a_refused_write_does_not_stop_the_writer() -> None:
    sink = Sink(fail_on="Bad")
    recorder = EventRecorder(sink, writers=1).start()
    recorder.create_event(OBJ, "Warning", "Bad", "x", "modelpilot", "now")
    recorder.create_event(OBJ, "Normal", "Good", "y", "modelpilot", "now")
    wait_until(lambda: sink.written == [("Good", "y")])
    recorder.stop()


def test_stop_writes_what_is_queued_then_ends_the_writers() -> None:
    sink = Sink()
    recorder = EventRecorder(sink, writers=2).start()
    for i in range(20):
        recorder.create_event(OBJ, "Normal", "CanaryStep", str(i), "modelpilot", "now")
    recorder.stop(timeout=5)
    assert sorted(int(m) for _, m in sink.written) == list(range(20))
    assert recorder.pending() == 0


def test_stop_gives_up_after_its_timeout_when_the_api_server_hangs() -> None:
    sink = Sink()
    sink.gate.clear()
    recorder = EventRecorder(sink, capacity=2, writers=1).start()
    for i in range(3):
        recorder.create_event(OBJ, "Normal", "Resolved", str(i), "modelpilot", "now")
    started = time.monotonic()
    recorder.stop(timeout=0.3)
    assert time.monotonic() - started < 1.5
    sink.gate.set()
