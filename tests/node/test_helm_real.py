"""The Helm chart, run for real: the operator image built by buildah (operator/Dockerfile, no Docker),
installed by `helm install`, running on the real node with its in-cluster configuration, its probes and
the chart's arguments; a ModelDeployment applied as a user writes it, answered through its Service.

Cluster-wide and namespaced (`watch.namespaces`): in namespaced mode a ModelDeployment elsewhere is
left alone (the operator has neither the permission nor the watch).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from hack.controlplane import ControlPlane
from hack.images import OPERATOR, build_image
from hack.proc import REPO, wait_for
from hack.realnode import NODE_NAME, RealNode
from modelpilot.kube import Kube
from tests.helpers import MDEP, Operator, Registry, apply, mdep_manifest, wait_ready
from tests.node.test_real_node import frame, invoke, local_predictions, service_url

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_image(real_node: RealNode) -> str:
    image, archive = build_image(OPERATOR)
    real_node.import_image(archive, image)
    return image


@pytest.fixture
def no_local_operator(operator: Operator) -> Iterator[None]:
    """The suite's operator (a local process) steps aside: two operators would both reconcile."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def helm(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    assert cp.bin is not None
    return subprocess.run([str(cp.bin / "helm"), "--kubeconfig", str(cp.kubeconfig_path), *args],
                          capture_output=True, text=True)


def _answer(url: str, data: Any) -> list[Any] | None:
    try:
        return invoke(url, data)
    except requests.RequestException:
        return None


def operator_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                        params={"labelSelector": "app.kubernetes.io/component=operator"})
    return list((body or {}).get("items", []))


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_the_helm_installed_operator_serves_a_model(
        mode: str, control_plane: ControlPlane, kube: Kube, real_node: RealNode, node_registry: Registry,
        operator_image: str, no_local_operator: None, model_name: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    release_ns, team, other = f"mp-{suffix}", f"team-{suffix}", f"other-{suffix}"
    for ns in (team, other):
        control_plane.kubectl("create", "namespace", ns)
    repository, tag = operator_image.rsplit(":", 1)
    assert real_node.image is not None
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "registry": {"trackingUri": node_registry.url},
        "scoringServer": {"cpuImage": real_node.image, "imagePullPolicy": "Never"},
        "crds": {"install": False},  # the suite's CRD is already there (and the chart's equals it: tests/chart)
        **({"watch": {"namespaces": [team]}} if mode == "namespaced" else {}),
    }
    sets = [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
    out = helm(control_plane, "install", "mp", str(REPO / "charts" / "modelpilot"), "--namespace", release_ns,
               "--create-namespace", "--wait", "--timeout", "180s", *sets)
    try:
        assert out.returncode == 0, out.stderr + "\n" + control_plane.kubectl(
            "describe", "pods", "-n", release_ns, check=False).stdout[-3000:]
        pods = operator_pods(kube, release_ns)
        assert len(pods) == 2, "two replicas by default: a leader and a standby"
        for pod in pods:
            assert pod["spec"]["nodeName"] == NODE_NAME, "the operator really runs (on the real node)"
            assert pod["spec"]["containers"][0]["image"] == operator_image
            assert all(c["ready"] for c in pod["status"]["containerStatuses"]), "its probes pass"
        lease = wait_for(lambda: (kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{release_ns}/leases/"
                                               "mp-modelpilot") or {}).get("spec", {}).get("holderIdentity"),
                         60, "a leader")
        pod = next(p for p in pods if lease.startswith(p["metadata"]["name"] + "_"))

        v1 = node_registry.register(model_name, alias="champion", seed=0)
        data = frame(50, seed=5)
        expected = local_predictions(node_registry, model_name, v1, data)
        manifest = mdep_manifest("fraud", team, f"models:/{model_name}@champion", replicas=1)
        del manifest["spec"]["tolerations"]  # as a user writes it: it runs on the real node
        apply(control_plane, manifest)
        elsewhere = mdep_manifest("fraud", other, f"models:/{model_name}@champion", replicas=1)
        del elsewhere["spec"]["tolerations"]
        apply(control_plane, elsewhere)

        try:
            wait_ready(kube, team, "fraud", timeout=240, version=v1)
        except AssertionError as exc:
            logs = control_plane.kubectl("logs", "-n", release_ns, pod["metadata"]["name"], check=False)
            raise AssertionError(f"{exc}\noperator logs:\n{logs.stdout[-4000:]}{logs.stderr}") from None
        url = service_url(kube, team, "fraud", real_node)
        # Ready pods are in the Service's endpoints a moment later (EndpointSlice → kube-proxy's rules)
        answer = wait_for(lambda: _answer(url, data), 30, f"an answer from {url}")
        assert answer == expected, "a prediction through the Service equals the registered version's"
        if mode == "namespaced":
            obj = kube.get(*MDEP, other, "fraud")
            assert obj is not None and not obj.get("status"), "outside watch.namespaces nothing is touched"
            assert kube.get("apps/v1", "Deployment", other, "fraud") is None
        else:
            wait_ready(kube, other, "fraud", timeout=240, version=v1)
        leaders = 0
        for each in operator_pods(kube, release_ns):
            logs = control_plane.kubectl("logs", "-n", release_ns, each["metadata"]["name"]).stdout
            assert "modelpilot operator started" in logs and "Traceback" not in logs, logs[-3000:]
            leaders += "Became the leader" in logs
            assert each["status"]["containerStatuses"][0]["restartCount"] == 0, "it never crashed"
        assert leaders == 1
    finally:
        for ns in (team, other):
            control_plane.kubectl("delete", "mdep", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
        out = helm(control_plane, "uninstall", "mp", "--namespace", release_ns, "--wait")
        for ns in (team, other, release_ns):
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert out.returncode == 0, out.stderr
