"""Fixtures for the real-node end-to-end tests: a kubelet + containerd node running the scoring-server
image built by buildah, an MLflow the pods can reach, and an operator configured with that image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.controlplane import ControlPlane
from hack.realnode import BRIDGE_IP, RealNode
from hack.services import MlflowServer
from tests.helpers import Operator, Registry


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
