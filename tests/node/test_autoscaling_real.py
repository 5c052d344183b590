"""Autoscaling on load, end to end: the HPA the operator renders scales real pods, and back.

Nothing is simulated between the load and the replica count: a client loop calls the Service's ClusterIP;
the scoring servers on the real node count their requests in flight; Prometheus finds the pods through
Kubernetes discovery (examples/podmonitor.yaml's selector) and scrapes them; prometheus-adapter serves
the series through the aggregation layer as the custom metrics API (examples/prometheus-adapter-rules.yaml,
the rule the README gives platform teams), and metrics-server the pods' CPU, read from the real kubelet,
as the resource metrics API; the controller-manager's HPA controller reads both there and scales the
stable Deployment, which the operator has handed over. Short behavior windows keep it to a few minutes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from hack.controlplane import ControlPlane
from hack.metricsapi import MetricsServer, PrometheusAdapter
from hack.proc import wait_for
from hack.realnode import RealNode
from modelpilot.kube import Kube
from tests.helpers import MDEP, Operator, Registry, apply, mdep_manifest, wait_ready
from tests.node.test_real_node import frame, service_url

pytestmark = pytest.mark.cluster

IN_FLIGHT = "modelpilot_requests_in_flight"


class BoundedLoad:
    """`clients` callers posting without pause to a Service, for at most `limit` seconds (bounded even if the
    test stalls), counting outcomes. Enough concurrency that requests queue in one pod."""

    def __init__(self, url: str, clients: int, limit: float, rows: int = 500) -> None:
        body = {"dataframe_split": frame(rows, seed=11).to_dict(orient="split") | {"index": None}}
        self.payload = json.dumps(body).encode()
        self.url = url
        self.deadline = time.monotonic() + limit
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            try:
                resp = session.post(f"{self.url}/invocations", data=self.payload, timeout=30,
                                    headers={"content-type": "application/json"})
                self.outcomes[str(resp.status_code)] += 1
            except requests.RequestException as exc:
                self.outcomes[type(exc).__name__] += 1
                time.sleep(0.2)

    def __enter__(self) -> BoundedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)


class Timeline:
    """What the HPA, the Deployment and the ModelDeployment's status said over time, for a failure message."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.started = time.monotonic()
        self.rows: list[str] = []
        self._last: dict[str, Any] = {}

    def sample(self) -> dict[str, Any]:
        hpa = self.kube.get("autoscaling/v2", "HorizontalPodAutoscaler", self.namespace, self.name) or {}
        dep = self.kube.get("apps/v1", "Deployment", self.namespace, self.name) or {}
        mdep = self.kube.get(*MDEP, self.namespace, self.name) or {}
        hs = hpa.get("status", {})
        metrics = {m.get("type"): m for m in hs.get("currentMetrics") or []}
        in_flight = ((metrics.get("Pods") or {}).get("pods") or {}).get("current", {}).get("averageValue")
        cpu = ((metrics.get("Resource") or {}).get("resource") or {}).get("current", {}).get("averageUtilization")
        active = next((f"{c['status']} {c['reason']}" for c in hs.get("conditions") or []
                       if c["type"] == "ScalingActive"), None)
        now = {"hpa_current": hs.get("currentReplicas"), "hpa_desired": hs.get("desiredReplicas"), "active": active,
               "in_flight": in_flight, "cpu": cpu, "replicas": dep.get("spec", {}).get("replicas"),
               "ready": dep.get("status", {}).get("readyReplicas", 0),
               "status": (mdep.get("status") or {}).get("autoscaling")}
        if now != self._last:  # changes only
            self.rows.append(f"{time.monotonic() - self.started:6.1f}s {now}")
            self._last = now
        return now

    def until(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Sample every second until `check` holds for a sample; fail with the timeline (as it is then)."""
        def holds() -> dict[str, Any] | None:
            now = self.sample()
            return now if check(now) else None

        try:
            return dict(wait_for(holds, timeout, what, interval=1))
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self}") from None

    def __str__(self) -> str:
        return "\n".join(self.rows[-40:])


def test_the_hpa_scales_real_pods_on_load_and_back(
        control_plane: ControlPlane, kube: Kube, real_node: RealNode, node_registry: Registry,
        node_operator: Operator, custom_metrics_api: PrometheusAdapter, resource_metrics_api: MetricsServer,
        namespace: str, model_name: str) -> None:
    version = node_registry.register(model_name, alias="champion", seed=0)
    # both metrics: the HPA scales up on the higher proposal, and down only once both allow it
    manifest = mdep_manifest("scaled", namespace, f"models:/{model_name}@champion", autoscaling={
        "minReplicas": 1, "maxReplicas": 3, "targetInFlight": 1, "targetCPUUtilization": 80,
        "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                     "scaleDown": {"stabilizationWindowSeconds": 5,
                                   "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]}}})
    del manifest["spec"]["tolerations"]  # real pods, on the real node
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "scaled", timeout=240, operator=node_operator, version=version)
    url = service_url(kube, namespace, "scaled", real_node)
    timeline = Timeline(kube, namespace, "scaled")

    # Idle: both metrics reach the HPA through their APIs, and it holds one replica.
    for api, served, what in ((custom_metrics_api, lambda: custom_metrics_api.pod_metric(namespace, IN_FLIGHT),
                               f"the custom metrics API to serve {IN_FLIGHT} for the pod"),
                              (resource_metrics_api, lambda: resource_metrics_api.pod_cpu(namespace),
                               "the resource metrics API to serve the pod's CPU")):
        try:
            wait_for(served, 90, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{api.report()}") from None
    idle = timeline.until(lambda s: s["in_flight"] is not None and s["cpu"] is not None, 60,
                          "the HPA to read both metrics")
    assert idle["hpa_current"] == 1 and idle["replicas"] == 1, timeline

    with BoundedLoad(url, clients=8, limit=300) as load:
        scaled = timeline.until(lambda s: s["ready"] >= 2 and (s["status"] or {}).get("currentReplicas", 0) >= 2,
                                240, "the HPA to scale up under load (and status.autoscaling to show it)")
        print(f"\nscaled up: {scaled}; load so far {dict(load.outcomes)}")  # shown with pytest -s
    # pods are only added under load: every request is answered (a stray refusal at most, under CPU load)
    assert load.outcomes["200"] >= 0.99 * sum(load.outcomes.values()), load.outcomes

    # Load stopped: back to one replica, and the operator's status says so (with no problem: the HPA reads
    # both metrics).
    timeline.until(lambda s: s["replicas"] == 1 and s["hpa_current"] == 1
                   and (s["status"] or {}).get("currentReplicas") == 1, 240,
                   "the HPA to scale back down once the load stopped")
    timeline.until(lambda s: s["active"] == "True ValidMetricFound" and "problem" not in (s["status"] or {}), 30,
                   "status.autoscaling without a problem while the HPA reads both metrics")
    mdep = kube.get(*MDEP, namespace, "scaled") or {}
    assert mdep["metadata"]["generation"] == 1, "the operator never writes the spec (the HPA owns the count)"
    print(f"timeline:\n{timeline}")
