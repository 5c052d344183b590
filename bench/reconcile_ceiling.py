"""`make bench-operator` (second table): the operator's own ceiling, where the API server is not the bottleneck.

On this 2-core machine the API server, etcd, the controller-manager and the operator share the cores, so the
fleet benchmark measures them together. This one holds the API server's side fixed: the same reconcile
pipeline (the real `Reconciler`, `WorkQueue` with the default 16 workers, watch cache, resolver and
refresher asking a registry over real HTTP) runs against an in-memory API (`tests/fakes/kube.py`) that
answers every request after a fixed delay, the round trip to an API server with cores to spare. An alias
moves (as a webhook reports it: the answers for that model are due at once); the time is until every one
of the fleet's Deployments names the new version, with the operator's Events written in the reconcile
(as before) and queued for the Event writer threads (as now).

It is a model of the API server, not the real one: what it shows is what the operator's own design allows
(workers and round trips per reconcile, and the CPU of one Python process), not what a given cluster does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tables import print_table  # noqa: E402  (this folder, the script's own)

from modelpilot.cache import Cache  # noqa: E402
from modelpilot.config import Settings  # noqa: E402
from modelpilot.events import EventRecorder  # noqa: E402
from modelpilot.reconciler import Reconciler  # noqa: E402
from modelpilot.workqueue import WorkQueue  # noqa: E402
from tests.fakes.kube import FakeKube  # noqa: E402
from tests.fakes.mlflow import FakeMlflow  # noqa: E402

NS = "bench"
VERSION_LABEL = "modelpilot.dev/model-version"


class SlowKube(FakeKube):
    """The in-memory API, thread-safe, answering each request after `latency` seconds."""

    def __init__(self, latency: float) -> None:
        super().__init__(gateway_api=False)
        self.latency = latency
        self.lock = threading.Lock()
        #: Deployment name → the version its pod template names
        self.versions: dict[str, str | None] = {}

    def _call(self, method: Any, *args: Any) -> Any:
        time.sleep(self.latency)  # the round trip (the GIL is released meanwhile)
        with self.lock:
            return method(*args)

    def get(self, *args: Any) -> Any:
        return self._call(super().get, *args)

    def apply(self, *args: Any) -> Any:
        answer = self._call(super().apply, *args)
        if answer["kind"] == "Deployment":  # counted here: scanning every object would hold the lock
            self.versions[answer["metadata"]["name"]] = answer["spec"]["template"]["metadata"]["labels"].get(
                VERSION_LABEL)
        return answer

    def patch_status(self, *args: Any) -> Any:
        return self._call(super().patch_status, *args)

    def create_event(self, *args: Any) -> Any:
        return self._call(super().create_event, *args)

    def delete(self, *args: Any) -> Any:
        return self._call(super().delete, *args)

    def moved(self, version: str) -> int:
        return sum(1 for v in list(self.versions.values()) if v == version)


def run(n: int, latency: float, queued_events: bool, mlflow: FakeMlflow, model: str,
        workers: int) -> tuple[float, float, float]:
    """Seconds from the alias move until all `n` Deployments name the new version, until the first did (the
    refresher looks for due answers once a second), and the process's CPU seconds meanwhile."""
    mlflow.set_alias(model, "champion", "1")
    kube = SlowKube(latency)
    settings = Settings(default_tracking_uri=mlflow.url, reconcile_workers=workers)
    cache = Cache(kube)
    for i in range(n):
        obj = kube.create({"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": f"m{i:05d}", "namespace": NS},
                           "spec": {"model": {"uri": f"models:/{model}@champion"}}})
        cache.put(obj["apiVersion"], obj["kind"], obj)
    loop = asyncio.new_event_loop()
    events = EventRecorder(kube).start() if queued_events else None
    holder: dict[str, Reconciler] = {}
    queue: WorkQueue[tuple[str, str]] = WorkQueue(lambda key: holder["r"].reconcile(*key),
                                                  workers=settings.reconcile_workers)
    reconciler = Reconciler(kube, settings,  # type: ignore[arg-type]  # the in-memory API
                            enqueue=lambda key: queue.add_threadsafe(key, urgent=True), cache=cache, events=events)
    holder["r"] = reconciler
    reconciler.outbound.start()
    reconciler.resolver.start_refresher()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    running = asyncio.run_coroutine_threadsafe(queue.run(), loop)
    try:
        while queue._loop is None:
            time.sleep(0.01)
        for i in range(n):
            queue.add_threadsafe((NS, f"m{i:05d}"), urgent=True)
        deadline = time.monotonic() + 600
        while kube.moved("1") < n:
            assert time.monotonic() < deadline, "the fleet did not resolve in 10 min"
            time.sleep(0.05)
        time.sleep(1)  # the last statuses
        mlflow.set_alias(model, "champion", "2")
        cpu, moved = time.process_time(), time.monotonic()
        reconciler.resolver.expedite(model)  # what a webhook does
        first = None
        while (done := kube.moved("2")) < n:
            assert time.monotonic() - moved < 600, "the fleet did not move in 10 min"
            if done and first is None:
                first = time.monotonic() - moved
            time.sleep(0.01)
        return time.monotonic() - moved, first or 0.0, time.process_time() - cpu
    finally:
        reconciler.resolver.stop_refresher()
        reconciler.outbound.stop()
        running.cancel()
        queue.shutdown()
        loop.call_soon_threadsafe(loop.stop)
        if events is not None:
            events.stop(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--latencies", default="0,10,30", help="API round trips to model, in ms")
    parser.add_argument("--workers", type=int, default=Settings().reconcile_workers,
                        help="reconcile workers (default: the operator's default)")
    args = parser.parse_args()
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the stopped loops' unfinished tasks, when collected
    mlflow = FakeMlflow()
    mlflow.registered.update({"1": 1_790_000_000_000, "2": 1_790_000_100_000})
    rows = []
    try:
        for i, ms in enumerate(float(x) for x in args.latencies.split(",")):
            cells = [f"{ms:.0f} ms"]
            for queued in (False, True):
                took, first, cpu = run(args.size, ms / 1000, queued, mlflow, f"fraud{i}{int(queued)}",
                                       args.workers)
                cells.append(f"{took:.1f} s (first after {first:.1f} s; CPU {cpu / took * 100:.0f} %)")
                print(f"[ceiling] {args.size} ModelDeployments, {ms:.0f} ms per request, events "
                      f"{'queued' if queued else 'in the reconcile'}: {cells[-1]}", file=sys.stderr, flush=True)
            rows.append(cells)
    finally:
        mlflow.close()
    head = ["API round trip", "alias move → every Deployment: Events in the reconcile", "Events queued (now)"]
    print_table([head, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
