"""Authenticated models on the real node, with the real API server: 401 / 403 / 200 for Kubernetes
ServiceAccount tokens (RBAC on `modeldeployments/predict`) and for API keys from a Secret."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from hack.controlplane import ControlPlane
from hack.proc import wait_for
from hack.realnode import RealNode
from modelpilot.kube import Kube
from tests.helpers import Operator, Registry, apply, mdep_manifest, reapply, wait_ready
from tests.node.test_real_node import COLUMNS, frame, service_url

pytestmark = pytest.mark.cluster

BODY = json.dumps({"dataframe_split": frame(3, seed=1).to_dict(orient="split") | {"index": None}})


def call(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    """One request, as a client with retries makes it: a refused connection is tried again for up to 30 s
    (this test is about the answers; that no request fails during a rollout is test_real_node's). In CI a
    pod that had just turned Ready has refused connections until kubelet restarted it, see the note in
    test_canary_real."""
    def attempt() -> tuple[requests.Response]:
        return (requests.post(f"{url}/invocations", data=BODY, timeout=30,
                              headers={"Content-Type": "application/json", **(headers or {})}),)

    return wait_for(attempt, 30, f"an answer from {url}")[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pod_report(cp: ControlPlane, namespace: str) -> str:
    pods = cp.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    logs = cp.kubectl("logs", "-n", namespace, "-l", "modelpilot.dev/deployment=guarded", "--tail=30",
                      "--prefix", check=False)
    events = cp.kubectl("get", "events", "-n", namespace, check=False).stdout
    return f"{pods}\n{logs.stdout}{logs.stderr}\n{events[-3000:]}"


def token_reviewer(cp: ControlPlane, namespace: str) -> None:
    """What the chart creates for a namespace in scoringServer.auth.kubernetesNamespaces."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": f"token-reviewer-{namespace}"},
            "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                      {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
                       "verbs": ["create"]}]}
    cp.kubectl("apply", "-f", "-", input=json.dumps(role))
    cp.kubectl("create", "serviceaccount", "modelpilot-serving", "-n", namespace)
    cp.kubectl("create", "clusterrolebinding", f"token-reviewer-{namespace}",
               f"--clusterrole=token-reviewer-{namespace}", f"--serviceaccount={namespace}:modelpilot-serving")


def test_kubernetes_tokens_and_api_keys_guard_a_model_on_the_real_node(
        control_plane: ControlPlane, kube: Kube, real_node: RealNode, node_registry: Registry,
        node_operator: Operator, namespace: str, model_name: str) -> None:
    assert len(COLUMNS) == 4
    node_registry.register(model_name, alias="champion", seed=0)
    token_reviewer(control_plane, namespace)
    manifest = mdep_manifest("guarded", namespace, f"models:/{model_name}@champion", auth={"mode": "kubernetes"})
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "guarded", timeout=240, operator=node_operator)
    url = service_url(kube, namespace, "guarded", real_node)
    control_plane.kubectl("create", "serviceaccount", "caller", "-n", namespace)
    caller = control_plane.kubectl("create", "token", "caller", "-n", namespace,
                                   "--audience", "modelpilot").stdout.strip()

    assert call(url).status_code == 401
    denied = call(url, bearer(caller))
    assert denied.status_code == 403, denied.text
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200  # probes stay open
    control_plane.kubectl("create", "role", "predict-guarded", "-n", namespace, "--verb=create",
                          "--resource=modeldeployments.modelpilot.dev/predict", "--resource-name=guarded")
    control_plane.kubectl("create", "rolebinding", "caller-predicts", "-n", namespace, "--role=predict-guarded",
                          f"--serviceaccount={namespace}:caller")
    wait_for(lambda: call(url, bearer(caller)).status_code == 200, 30, "the Role to let the caller in")

    # The same model behind API keys: the Secret's values are the keys.
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": "guarded-keys", "namespace": namespace},
                              "data": {"checkout": base64.b64encode(b"k-123-checkout").decode()}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    manifest["spec"]["auth"] = {"mode": "apiKey", "apiKeySecretRef": {"name": "guarded-keys"}}
    reapply(control_plane, manifest)
    try:
        wait_for(lambda: call(url, {"X-API-Key": "k-123-checkout"}).status_code == 200, 240,
                 "the API-key pods to serve")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{pod_report(control_plane, namespace)}") from None
    wait_ready(kube, namespace, "guarded", timeout=120, operator=node_operator)
    # the kubernetes-mode pod keeps answering for a few seconds while it terminates (preStop): wait until it
    # is gone (five good answers in a row were not proof: the Service picks a pod at random)
    def pods() -> int:
        body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                            params={"labelSelector": "modelpilot.dev/deployment=guarded"})
        return len((body or {}).get("items", []))

    wait_for(lambda: pods() == 1, 90, "only the API-key pod to remain")
    wait_for(lambda: all(call(url, bearer("k-123-checkout")).status_code == 200 for _ in range(5)), 60,
             "only API-key pods to answer")
    assert call(url).status_code == 401
    assert call(url, bearer(caller)).status_code == 403  # a token is not a key
    assert call(url, bearer("k-123-checkout")).status_code == 200
