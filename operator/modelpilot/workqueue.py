"""A delaying, de-duplicating work queue for reconciles, driven by the operator's event loop.

Why not kopf timers or daemons: kopf puts a finalizer on every object that has a timer or daemon, so
uninstalling the operator would leave ModelDeployments stuck in deletion, and Argo CD would see a
field nobody committed. Instead every trigger only *enqueues* the object's key; this queue runs at
most one reconcile per key at a time, coalesces bursts (ten Deployment status events → one
reconcile), and re-enqueues a key after the delay the reconcile asked for (refresh interval, backoff).

At most `workers` keys are handed to the threads at once, so the queue — not a thread pool's FIFO —
chooses what runs next: *urgent* keys first (a ModelDeployment created or edited, a registry answer
that moved a version), then the longest-waiting. A burst of Deployment status events from a thousand
rollouts cannot push a new ModelDeployment's first reconcile to the back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
#: Longest wait between retries of a failing key, in seconds.
MAX_ERROR_DELAY = 300.0


class Retry(Exception):
    """The work failed in a way already reported (status, event): retry with backoff, log one line."""


def error_backoff(base: float, failures: int, cap: float = MAX_ERROR_DELAY) -> float:
    """base · 2^failures, capped; the exponent is bounded so no count of failures overflows."""
    return min(base * 2.0 ** min(max(failures, 0), 30), cap)


class Stalled(Exception):
    """The queue has work due but finished none for too long (the liveness probe fails)."""


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K], float | None], workers: int = 4,
                 error_delay: Callable[[K, int], float] | None = None) -> None:
        self._process = process
        self._workers = workers
        self._error_delay = error_delay or (lambda _key, n: error_backoff(1.0, n))
        self._due: dict[K, float] = {}
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._errors: dict[K, int] = {}
        #: Keys to run ahead of the others when due (cleared when they run).
        self._urgent: set[K] = set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._tasks: set[asyncio.Task[None]] = set()
        #: loop time of the last finished piece of work (or of the start)
        self._progress = 0.0
        #: False while another replica leads: keys are kept, none is processed.
        self.active = True

    def activate(self) -> None:
        """Start processing (this replica became the leader): everything queued so far is due."""
        self.active = True
        if self._loop is not None and self._wake is not None:
            self._progress = self._loop.time()
            self._wake.set()

    def add(self, key: K, delay: float = 0.0, urgent: bool = False) -> None:
        """Ask for `key` to be processed after `delay` seconds (the earliest request wins); `urgent`
        keys run before other due keys."""
        if self._loop is None or self._wake is None:
            raise RuntimeError("the work queue is not running")
        if urgent:
            self._urgent.add(key)
        if delay <= 0 and key in self._running:
            self._dirty.add(key)  # run again right after the current pass, with fresh state
            return
        at = self._loop.time() + max(delay, 0.0)
        if key not in self._due or at < self._due[key]:
            self._due[key] = at
            self._wake.set()

    def add_threadsafe(self, key: K, urgent: bool = False) -> None:
        """`add(key, urgent=urgent)` from another thread (e.g. when a registry answer arrives)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self.add(key, urgent=urgent))

    def check_progress(self, stall_seconds: float) -> None:
        """Raise Stalled when work has been due for `stall_seconds` and none finished meanwhile."""
        if self._loop is None or not self.active:
            return
        now = self._loop.time()
        # Work is waiting when a key runs (or waits for a worker: keys past their time are handed to the
        # executor at once) or is overdue; a reconcile takes seconds, so a long silence means stuck.
        overdue = any(now - at > stall_seconds for key, at in self._due.items() if key not in self._running)
        if (self._running or overdue) and now - self._progress > stall_seconds:
            raise Stalled(f"no reconcile finished for {now - self._progress:.0f}s with {len(self)} keys waiting")

    def __len__(self) -> int:
        return len(self._due) + len(self._running)

    def oldest_wait(self) -> float:
        """Seconds the longest-overdue key has been waiting for a worker (0: nothing overdue). Safe to call
        from another thread (a metrics scrape): it reads one snapshot of the due times."""
        if self._loop is None:
            return 0.0
        now = self._loop.time()
        waiting = [at for at in list(self._due.values()) if at <= now]
        return max(0.0, now - min(waiting)) if waiting else 0.0

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._progress = self._loop.time()
        while True:
            now = self._loop.time()
            if not self.active:
                self._wake.clear()
                await self._wake.wait()
                continue
            free = self._workers - len(self._running)
            # choosing means scanning every due key: do it when a few workers are free, not for each one
            if free < max(1, self._workers // 4) and self._running:
                free = 0
            ready = [(k not in self._urgent, at, n, k) for n, (k, at) in enumerate(self._due.items())
                     if at <= now and k not in self._running] if free > 0 else []
            for _, _, _, key in heapq.nsmallest(free, ready):
                if not self._running:
                    self._progress = now  # idle until now: the silence so far was no stall
                del self._due[key]
                self._urgent.discard(key)
                self._running.add(key)
                task = asyncio.create_task(self._work(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            pending = [at for k, at in self._due.items() if k not in self._running]
            # a free worker wakes for the next due key; all busy: a finished one wakes the loop
            timeout = max(min(pending) - now, 0.0) if pending and free > 0 else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _work(self, key: K) -> None:
        assert self._loop is not None and self._wake is not None
        requeue: float | None
        try:
            requeue = await self._loop.run_in_executor(self._executor, self._process, key)
            self._errors.pop(key, None)
        except Exception as exc:
            count = self._errors.get(key, 0) + 1
            self._errors[key] = count
            requeue = self._error_delay(key, count)
            if isinstance(exc, Retry):
                log.warning("Reconcile of %s: %s (attempt %d), retrying in %.0fs", key, exc, count, requeue)
            else:
                log.exception("Reconcile of %s failed (attempt %d), retrying in %.0fs", key, count, requeue)
        finally:
            self._running.discard(key)
            self._progress = self._loop.time()
        if key in self._dirty:
            self._dirty.discard(key)
            requeue = 0.0
        if requeue is not None:
            self.add(key, requeue)
        self._wake.set()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
