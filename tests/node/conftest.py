"""Fixtures for the real-node end-to-end tests: a kubelet + containerd node running the scoring-server
image built by buildah, an MLflow the pods can reach, an operator configured with that image, a Prometheus
that finds the serving pods as a PodMonitor would, and the HPA's metrics APIs (custom metrics from that
Prometheus, resource metrics from the kubelet)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.controlplane import ControlPlane
from hack.metricsapi import MetricsServer, PrometheusAdapter
from hack.realnode import BRIDGE_IP, RealNode
from hack.services import MlflowServer, PrometheusServer
from tests.helpers import REPO, Operator, Registry


@pytest.fixture(scope="session")
def real_node(control_plane: ControlPlane) -> Iterator[RealNode]:
    node = RealNode(control_plane)
    node.start()
    yield node
    if not os.environ.get("MODELPILOT_TEST_STATE"):
        node.stop()


@pytest.fixture(scope="session")
def node_mlflow(state_dir: Path, real_node: RealNode) -> Iterator[MlflowServer]:
    """MLflow listening on every address: pods reach it at the node bridge's address."""
    server = MlflowServer(state_dir, name="mlflow-node", host="0.0.0.0")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_registry(node_mlflow: MlflowServer) -> Registry:
    # The URI pods (and the operator, which passes it on) use: the host's address on the pod bridge.
    return Registry(f"http://{BRIDGE_IP}:{node_mlflow.port}")


@pytest.fixture(scope="module")
def node_operator(operator: Operator, control_plane: ControlPlane, real_node: RealNode, node_registry: Registry,
                  state_dir: Path) -> Iterator[Operator]:
    """The operator, with the locally built image, instead of the session one (one operator at a time)."""
    assert real_node.image is not None
    own = Operator(state_dir / "node-operator", control_plane.kubeconfig_path, node_registry.url)
    own.env.update(MODELPILOT_SERVER_IMAGE_CPU=real_node.image, MODELPILOT_SERVER_IMAGE_PULL_POLICY="Never")
    with own.in_place_of(operator):
        yield own


def podmonitor_job(kubeconfig: Path) -> dict[str, Any]:
    """A kubernetes_sd pod job that selects what examples/podmonitor.yaml selects (read from the file)."""
    monitor = yaml.safe_load((REPO / "examples" / "podmonitor.yaml").read_text())
    labels = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]

    def meta(label: str) -> str:
        return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)

    return {
        "job_name": "podmonitor-modelpilot", "scrape_interval": "1s", "metrics_path": endpoint["path"],
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            *({"source_labels": [meta(k)], "regex": v, "action": "keep"} for k, v in labels.items()),
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"],
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


@pytest.fixture(scope="module")
def pod_prometheus(state_dir: Path, control_plane: ControlPlane, real_node: RealNode) -> Iterator[PrometheusServer]:
    server = PrometheusServer(state_dir, name="prometheus-pods",
                              scrape_configs=[podmonitor_job(control_plane.kubeconfig_path)])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def custom_metrics_api(state_dir: Path, control_plane: ControlPlane,
                       pod_prometheus: PrometheusServer) -> Iterator[PrometheusAdapter]:
    """`custom.metrics.k8s.io` from prometheus-adapter with examples/prometheus-adapter-rules.yaml, reached
    by the API server at the node bridge's address (this machine's, as pods see it)."""
    adapter = PrometheusAdapter(state_dir, control_plane, BRIDGE_IP, pod_prometheus.url)
    try:
        adapter.start()
        yield adapter
    finally:
        adapter.stop()  # the APIService first: an unanswered API group stalls namespace deletion


@pytest.fixture(scope="module")
def resource_metrics_api(state_dir: Path, control_plane: ControlPlane, real_node: RealNode) -> Iterator[MetricsServer]:
    """`metrics.k8s.io` from metrics-server reading the real node's kubelet."""
    server = MetricsServer(state_dir, control_plane, BRIDGE_IP)
    try:
        server.start()
        yield server
    finally:
        server.stop()
