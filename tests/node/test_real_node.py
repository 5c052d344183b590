"""End to end on the real node: pods run the scoring-server image and answer through the Service.

The image is the project's own serving-image/Dockerfile built by buildah on a debootstrap base; the
pod downloads the resolved version from MLflow, becomes Ready through its real probes, and requests
reach it through the Service's ClusterIP via kube-proxy's iptables rules. Nothing is simulated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from hack.controlplane import ControlPlane
from hack.proc import wait_for
from hack.realnode import NODE_NAME, RealNode
from modelpilot.kube import Kube
from tests.helpers import MDEP, Operator, Registry, apply, mdep_manifest, wait_ready

pytestmark = pytest.mark.cluster

COLUMNS = [f"f{i}" for i in range(4)]  # Registry.register trains on 4 columns


def frame(rows: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(rows, len(COLUMNS))), columns=COLUMNS)


def local_predictions(registry: Registry, name: str, version: str, data: pd.DataFrame) -> list[Any]:
    """What the registered version predicts when loaded right here, the way a data scientist checks it."""
    import mlflow.pyfunc

    mlflow.set_tracking_uri(registry.url)
    return list(np.asarray(mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(data)).tolist())


def service_url(kube: Kube, namespace: str, name: str, node: RealNode) -> str:
    """The Service's address, once kube-proxy routes it to a pod: a Ready ModelDeployment says its pods are
    ready, not that kube-proxy has written the rules yet (under load that can lag). A liveness answer is
    the proof: without a rule, whatever answers on the default route does not say {"live":true}."""
    svc = kube.get("v1", "Service", namespace, name)
    assert svc is not None
    ip = svc["spec"]["clusterIP"]
    url = f"http://{ip}:{svc['spec']['ports'][0]['port']}"

    def routed() -> bool:
        resp = requests.get(f"{url}/v2/health/live", timeout=5)
        return resp.status_code == 200 and resp.content.startswith(b'{"live":true')

    try:
        wait_for(routed, 60, f"Service {namespace}/{name} ({url}) to reach a pod")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{node.proxy_report(ip)}") from None
    return url


def invoke(url: str, data: pd.DataFrame) -> list[Any]:
    resp = requests.post(f"{url}/invocations", json={"dataframe_split": data.to_dict(orient="split") | {
        "index": None}}, timeout=30)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["predictions"])


def pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                        params={"labelSelector": f"modelpilot.dev/deployment={name}"})
    return list((body or {}).get("items", []))


class ClientLoop:
    """A client calling the Service without pause, as an application would, counting every outcome."""

    def __init__(self, url: str, data: pd.DataFrame) -> None:
        self.url = url
        self.body = {"dataframe_split": data.to_dict(orient="split") | {"index": None}}
        self.outcomes: Counter[str] = Counter()
        self.answers: list[tuple[float, tuple[Any, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = requests.post(f"{self.url}/invocations", json=self.body, timeout=10)
                self.outcomes[str(resp.status_code)] += 1
                if resp.status_code == 200:
                    self.answers.append((time.monotonic(), tuple(resp.json()["predictions"])))
            except requests.RequestException as exc:
                self.outcomes[type(exc).__name__] += 1
            time.sleep(0.02)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(15)


def test_apply_serve_follow_the_alias_without_a_failed_request_and_delete(
        control_plane: ControlPlane, kube: Kube, real_node: RealNode, node_registry: Registry,
        node_operator: Operator, namespace: str, model_name: str) -> None:
    v1 = node_registry.register(model_name, alias="champion", seed=0)
    v2 = node_registry.register(model_name, seed=7)
    data = frame(200, seed=3)
    expected_v1 = local_predictions(node_registry, model_name, v1, data)
    expected_v2 = local_predictions(node_registry, model_name, v2, data)
    assert expected_v1 != expected_v2, "the two versions must be told apart by their answers"

    # As a new user writes it: no tolerations, no nodeSelector. It must land on the real node (the
    # simulated nodes are tainted) and answer.
    manifest = mdep_manifest("fraud", namespace, f"models:/{model_name}@champion", replicas=2, refreshInterval="2s")
    del manifest["spec"]["tolerations"]
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "fraud", timeout=240, operator=node_operator, version=v1)
    running = pods(kube, namespace, "fraud")
    assert len(running) == 2 and {p["spec"]["nodeName"] for p in running} == {NODE_NAME}
    assert all(p["spec"]["containers"][0]["image"] == real_node.image for p in running)
    url = service_url(kube, namespace, "fraud", real_node)
    assert invoke(url, data) == expected_v1, "the Service answers what the registered version predicts"

    # Move the alias while a client keeps calling: a rolling update, and not one failed request.
    with ClientLoop(url, data.head(50)) as client:
        time.sleep(2)
        node_registry.set_alias(model_name, "champion", v2)
        moved = time.monotonic()
        wait_ready(kube, namespace, "fraud", timeout=240, operator=node_operator, version=v2)
        wait_for(lambda: len(pods(kube, namespace, "fraud")) == 2, 90, "old pods to be gone")
        wait_for(lambda: client.answers and client.answers[-1][1] == tuple(expected_v2[:50]), 30,
                 "answers from version 2")
        time.sleep(2)
    first_v2 = next(t for t, a in client.answers if a == tuple(expected_v2[:50]))
    print(f"\nduring the rollout: {dict(client.outcomes)} responses; first answer of version {v2} "
          f"{first_v2 - moved:.1f}s after the alias moved")  # shown with pytest -s
    assert set(client.outcomes) == {"200"}, f"failed requests during the rollout: {client.outcomes}"
    assert client.outcomes["200"] > 50
    answers = {a for t, a in client.answers if t > moved}
    assert answers <= {tuple(expected_v1[:50]), tuple(expected_v2[:50])}, "every answer is one version's"
    assert invoke(url, data) == expected_v2
    versions = {p["metadata"]["labels"]["modelpilot.dev/model-version"] for p in pods(kube, namespace, "fraud")}
    assert versions == {v2}

    control_plane.kubectl("delete", "mdep", "fraud", "-n", namespace)
    wait_for(lambda: not pods(kube, namespace, "fraud"), 120, "the pods to be deleted")
    assert kube.get(*MDEP, namespace, "fraud") is None
    assert kube.get("apps/v1", "Deployment", namespace, "fraud") is None
