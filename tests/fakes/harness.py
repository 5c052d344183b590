"""The whole reconcile against an in-memory API and a fake registry over real HTTP, with fake clocks.

Shared by the fast reconcile tests (tests/unit/test_reconcile.py) and by the tests that need a status
"as the operator really writes it" (the Argo CD health check).
"""

from __future__ import annotations

from typing import Any

from modelpilot.cache import Cache
from modelpilot.config import Settings
from modelpilot.reconciler import Reconciler
from tests.fakes.kube import FakeKube
from tests.fakes.mlflow import FakeMlflow

NS = "team-a"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, kube: FakeKube, mlflow: FakeMlflow, cached: bool = False, **settings: Any) -> None:
        self.kube = kube
        #: With `cached`, reads come from a watch cache that `deliver()` fills (before each reconcile) the way
        #: kopf's watches do.
        self.cached = cached
        self.mlflow = mlflow
        self.clock = Clock(1000.0)
        self.wall = Clock(T0)
        self.settings = Settings(default_tracking_uri=mlflow.url, retry_base_seconds=1,
                                 registry_timeout_seconds=2, **settings)
        self.enqueued: list[tuple[str, str]] = []
        self.reconciler = self._reconciler()

    def _reconciler(self) -> Reconciler:
        cache = None
        if self.cached:
            cache = Cache(self.kube)
        return Reconciler(self.kube, self.settings, enqueue=self.enqueued.append, clock=self.clock,
                          wall_clock=self.wall, cache=cache)

    def restart(self) -> None:
        self.reconciler.outbound.stop()
        self.reconciler = self._reconciler()

    def deliver(self) -> None:
        """What kopf's watches would deliver to the cache by now: every ModelDeployment, and every object
        labelled managed-by modelpilot (the label selector the watches send); gone objects removed."""
        cache = self.reconciler.cache
        assert cache is not None
        for (api_version, kind, namespace, name) in cache.held():
            if (api_version, kind, namespace, name) not in self.kube.objects:
                cache.remove(api_version, kind, namespace, name)
        for (api_version, kind, _, _), obj in self.kube.objects.items():
            labels = obj["metadata"].get("labels") or {}
            if kind == "ModelDeployment" or labels.get("app.kubernetes.io/managed-by") == "modelpilot":
                cache.put(api_version, kind, obj)

    def apply(self, name: str = "m", **spec: Any) -> None:
        spec = {"model": {"uri": "models:/fraud@champion"}, **spec}
        if ("modelpilot.dev/v1alpha1", "ModelDeployment", NS, name) in self.kube.objects:
            self.kube.update_spec(NS, name, spec)
        else:
            self.kube.create({"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
                              "metadata": {"name": name, "namespace": NS}, "spec": spec})

    def reconcile(self, name: str = "m") -> float | None:
        if self.cached:
            self.deliver()  # the watches have delivered everything by the time a reconcile runs
        return self.reconciler.reconcile(NS, name)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.wall.now += seconds

    def condition(self, type_: str, name: str = "m") -> dict[str, Any]:
        conds = (self.kube.mdep(NS, name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})

    def reasons(self, type_: str | None = None) -> list[str]:
        return [e["reason"] for e in self.kube.events if type_ is None or e["type"] == type_]

    def converge(self, name: str = "m") -> None:
        """Reconcile, let the fake controllers roll the Deployments out, reconcile again."""
        self.reconcile(name)
        self.kube.settle()
        self.reconcile(name)

    def status(self, name: str = "m") -> dict[str, Any]:
        return dict(self.kube.mdep(NS, name).get("status") or {})

    def stop(self) -> None:
        self.reconciler.outbound.stop()
