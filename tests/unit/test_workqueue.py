"""The work queue's promises, as the README states them: one reconcile per key at a time, bursts
coalesced, a key re-run right after a pass that was asked for during it, failures retried with a
growing (capped) delay and never dropped."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable

from modelpilot.workqueue import Retry, WorkQueue, error_backoff


def drive(queue: WorkQueue[str], steps: Callable[[WorkQueue[str]], Awaitable[None]]) -> None:
    """Run `queue` on an event loop while `steps` feeds it, then stop it."""
    async def main() -> None:
        runner = asyncio.create_task(queue.run())
        await asyncio.sleep(0.01)
        try:
            await steps(queue)
        finally:
            runner.cancel()
            queue.shutdown()

    asyncio.run(main())


def test_a_burst_of_triggers_is_one_reconcile() -> None:
    calls: list[str] = []

    async def steps(queue: WorkQueue[str]) -> None:
        for _ in range(10):
            queue.add("a")  # ten Deployment status events in one tick
        await asyncio.sleep(0.3)

    drive(WorkQueue(lambda k: calls.append(k) and None, workers=2), steps)
    assert calls == ["a"]


def test_one_reconcile_per_key_at_a_time_and_a_trigger_during_it_runs_again_after() -> None:
    running: dict[str, int] = {}
    overlap: list[str] = []
    done: list[str] = []
    release = threading.Event()

    def process(key: str) -> None:
        running[key] = running.get(key, 0) + 1
        if running[key] > 1:
            overlap.append(key)
        release.wait(2)
        running[key] -= 1
        done.append(key)

    async def steps(queue: WorkQueue[str]) -> None:
        queue.add("a")
        await asyncio.sleep(0.1)
        queue.add("a")  # while "a" runs: it must run once more afterwards, never beside itself
        queue.add("a")
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.sleep(0.3)

    drive(WorkQueue(process, workers=4), steps)
    assert overlap == [] and done == ["a", "a"]


def test_failures_are_retried_with_growing_delays_and_never_dropped() -> None:
    attempts: list[float] = []

    def process(_key: str) -> float | None:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise Retry("refused")
        return None

    async def steps(queue: WorkQueue[str]) -> None:
        queue.add("a")
        await asyncio.sleep(1.5)

    drive(WorkQueue(process, workers=1, error_delay=lambda _k, n: error_backoff(0.05, n, cap=0.5)), steps)
    assert len(attempts) == 4, "retried until it succeeded, then not again"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] < gaps[1] < gaps[2], f"the delay grows: {gaps}"


def test_the_delay_a_reconcile_asks_for_is_kept() -> None:
    attempts: list[float] = []

    def process(_key: str) -> float | None:
        attempts.append(time.monotonic())
        return 0.3 if len(attempts) == 1 else None

    async def steps(queue: WorkQueue[str]) -> None:
        queue.add("a")
        await asyncio.sleep(0.1)
        queue.add("a", delay=5)  # a later request does not push back the earlier one
        await asyncio.sleep(0.6)

    drive(WorkQueue(process, workers=1), steps)
    assert len(attempts) == 2 and 0.25 < attempts[1] - attempts[0] < 0.6


def test_a_standby_keeps_keys_without_processing_them_and_is_never_stalled() -> None:
    calls: list[str] = []

    async def steps(queue: WorkQueue[str]) -> None:
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.2)
        assert calls == []
        queue.check_progress(0.0)  # waiting for the lease is not a stall
        queue.activate()  # became the leader
        await asyncio.sleep(0.2)

    queue: WorkQueue[str] = WorkQueue(lambda k: calls.append(k) and None, workers=2)
    queue.active = False
    drive(queue, steps)
    assert sorted(calls) == ["a", "b"]


def test_the_oldest_wait_is_how_long_a_due_key_has_waited_for_a_worker() -> None:
    release = threading.Event()
    seen: list[float] = []

    async def steps(queue: WorkQueue[str]) -> None:
        assert queue.oldest_wait() == 0.0
        queue.add("busy")  # takes the only worker
        await asyncio.sleep(0.05)
        queue.add("waiting")
        queue.add("later", delay=60)  # not due yet: not waiting
        await asyncio.sleep(0.4)
        seen.append(queue.oldest_wait())
        release.set()
        await asyncio.sleep(0.2)
        seen.append(queue.oldest_wait())

    drive(WorkQueue(lambda k: release.wait(2) and None, workers=1), steps)
    assert 0.35 <= seen[0] < 2 and seen[1] == 0.0


def test_urgent_keys_run_before_keys_that_waited_longer() -> None:
    order: list[str] = []
    gate = threading.Event()

    def process(key: str) -> None:
        if key == "busy":
            gate.wait(2)
        order.append(key)

    async def steps(queue: WorkQueue[str]) -> None:
        queue.add("busy")
        await asyncio.sleep(0.05)
        for i in range(5):
            queue.add(f"status-event-{i}")  # Deployment status events of earlier rollouts
        queue.add("new-modeldeployment", urgent=True)
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.sleep(0.3)

    drive(WorkQueue(process, workers=1), steps)
    assert order[:2] == ["busy", "new-modeldeployment"] and len(order) == 7
