"""`helm install` into the real control plane, then the operator scenario with the chart's own RBAC.

The operator runs with a token of the chart's ServiceAccount (TokenRequest API), so a permission the
chart forgot fails the scenario; the API server's audit log then shows every request that
ServiceAccount made, and the test asserts the chart grants nothing that was never used.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.controlplane import ControlPlane, simulated_node_tolerations
from hack.proc import wait_for
from hack.services import MlflowServer
from modelpilot.kube import Kube
from tests.chart.test_chart import OPERATOR_NEEDS
from tests.helpers import MDEP, REPO, Operator, Registry, apply, mdep_manifest, reapply, wait_event, wait_ready

pytestmark = pytest.mark.cluster

RELEASE = "mp"
SA = "mp-modelpilot"


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, mlflow_server: MlflowServer) -> Iterator[str]:
    assert control_plane.bin is not None
    ns = f"modelpilot-{uuid.uuid4().hex[:6]}"
    helm = [str(control_plane.bin / "helm"), "--kubeconfig", str(control_plane.kubeconfig_path)]
    out = subprocess.run([*helm, "install", RELEASE, str(REPO / "charts" / "modelpilot"), "--namespace", ns,
                          "--create-namespace", "--take-ownership", "--wait", "--timeout", "120s",
                          "--set", f"registry.trackingUri={mlflow_server.url}",
                          # the operator image is not built here: its pod runs on a simulated node
                          "--set-json", f"tolerations={json.dumps(simulated_node_tolerations())}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Serve a model" in out.stdout, "NOTES.txt tells the user what to do next"
    yield ns
    out = subprocess.run([*helm, "uninstall", RELEASE, "--namespace", ns, "--wait"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the CRD carries helm.sh/resource-policy: keep, so ModelDeployments survive an uninstall
    assert control_plane.kubectl("get", "crd", "modeldeployments.modelpilot.dev", check=False).returncode == 0


def test_helm_install_creates_the_operator(installed: str, kube: Kube) -> None:
    dep = kube.get("apps/v1", "Deployment", installed, SA)
    assert dep is not None and dep["status"].get("readyReplicas") == 2  # a leader and a standby
    assert kube.get("v1", "Service", installed, f"{SA}-metrics") is not None


def _token_kubeconfig(cp: ControlPlane, namespace: str, path: Path) -> Path:
    token = cp.kubectl("create", "token", SA, "-n", namespace, "--duration", "1h").stdout.strip()
    admin = json.loads(cp.kubeconfig_path.read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))
    return path


def _audited(cp: ControlPlane, user: str) -> dict[tuple[str, str], set[str]]:
    used: dict[tuple[str, str], set[str]] = {}
    for line in cp.audit_log.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event.get("user", {}).get("username") != user or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        verbs = used.setdefault((ref.get("apiGroup", ""), resource), set())
        verbs.add(event["verb"])
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            verbs.add("create")  # a server-side apply that creates is authorized as create as well
    return used


def test_operator_scenario_with_the_charts_serviceaccount(
        installed: str, control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry,
        mlflow_server: MlflowServer, namespace: str, model_name: str, tmp_path: Path) -> None:
    kubeconfig = _token_kubeconfig(control_plane, installed, tmp_path / "sa-kubeconfig")
    limited = Operator(tmp_path, kubeconfig, mlflow_server.url)
    # as the chart runs it: electing itself leader on the release's Lease
    limited.env.update(MODELPILOT_LEADER_ELECTION="true", MODELPILOT_LEADER_ELECTION_NAMESPACE=installed,
                       MODELPILOT_LEADER_ELECTION_ID=SA)
    # one operator at a time: the admin one would mask missing permissions
    with limited.in_place_of(operator):
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mlflow-auth", "namespace": namespace},
                  "data": {"token": base64.b64encode(b"not-checked-by-this-registry").decode()}}
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
        registry.register(model_name, alias="champion", seed=0)
        apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="2s",
                                           registry={"credentialsSecretRef": {"name": "mlflow-auth"}}))
        wait_ready(kube, namespace, "m", operator=limited)
        new = registry.register(model_name, alias="champion", seed=1)
        wait_ready(kube, namespace, "m", operator=limited, version=new)
        assert "Resolved" in {e["reason"] for e in wait_event(kube, namespace, "m", "VersionChanged")}
        # a canary through the Gateway API, then its removal, then the switch to the replica router:
        # HTTPRoute and per-track Services are created, patched and deleted under the chart's RBAC
        registry.set_alias(model_name, "challenger", "1")
        canary = mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="2s",
                               registry={"credentialsSecretRef": {"name": "mlflow-auth"}},
                               traffic={"router": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
                               canary={"model": {"uri": f"models:/{model_name}@challenger"}, "weight": 20})
        reapply(control_plane, canary)
        wait_for(lambda: ((kube.get(*MDEP, namespace, "m") or {}).get("status") or {}).get("canary", {}).get(
            "phase") == "Manual", 60, f"the manual canary\n{limited.logs()}")
        del canary["spec"]["canary"]
        reapply(control_plane, canary)
        wait_for(lambda: kube.get("apps/v1", "Deployment", namespace, "m-canary") is None, 60, "canary removed")
        canary["spec"]["traffic"] = {"router": "replicas"}
        reapply(control_plane, canary)
        wait_for(lambda: kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "m") is None, 60,
                 "the HTTPRoute to be removed")
        # spec.networkPolicy: the NetworkPolicy is created, changed and deleted with the spec
        peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "callers"}}}]
        canary["spec"]["networkPolicy"] = {"allowFrom": peers}
        reapply(control_plane, canary)
        policy = wait_for(lambda: kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, "m"), 60,
                          f"the NetworkPolicy\n{limited.logs()}")
        assert policy["spec"]["ingress"][0]["from"] == peers
        peers.append({"podSelector": {"matchLabels": {"app": "gateway"}}})
        reapply(control_plane, canary)
        wait_for(lambda: len((kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, "m") or {}).get(
            "spec", {}).get("ingress", [{}])[0].get("from", [])) == 2, 60, "the NetworkPolicy to be updated")
        del canary["spec"]["networkPolicy"]
        reapply(control_plane, canary)
        wait_for(lambda: kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, "m") is None, 60,
                 "the NetworkPolicy to be removed")
        # spec.disruptionBudget: the PodDisruptionBudget is created, changed and deleted with the spec
        pdb = ("policy/v1", "PodDisruptionBudget", namespace, "m")
        canary["spec"]["disruptionBudget"] = {"minAvailable": 1}
        reapply(control_plane, canary)
        assert wait_for(lambda: kube.get(*pdb), 60, f"the PodDisruptionBudget\n{limited.logs()}")["spec"][
            "minAvailable"] == 1
        canary["spec"]["disruptionBudget"] = {"maxUnavailable": "50%"}
        reapply(control_plane, canary)
        wait_for(lambda: (kube.get(*pdb) or {}).get("spec", {}).get("maxUnavailable") == "50%", 60,
                 "the PodDisruptionBudget to be updated")
        del canary["spec"]["disruptionBudget"]
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*pdb) is None, 60, "the PodDisruptionBudget to be removed (replicas 1)")
        # spec.autoscaling: the HorizontalPodAutoscaler is created, changed and deleted with the spec
        hpa = ("autoscaling/v2", "HorizontalPodAutoscaler", namespace, "m")
        canary["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 80}
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*hpa), 60, f"the HorizontalPodAutoscaler\n{limited.logs()}")
        canary["spec"]["autoscaling"]["maxReplicas"] = 4
        reapply(control_plane, canary)
        wait_for(lambda: (kube.get(*hpa) or {}).get("spec", {}).get("maxReplicas") == 4, 60, "the HPA to be updated")
        # engine keda (KEDA's CRD is installed, KEDA itself is not): the HPA gives way to a ScaledObject, changed
        # and deleted with the spec
        scaled = ("keda.sh/v1alpha1", "ScaledObject", namespace, "m")
        canary["spec"]["autoscaling"] = {"engine": "keda", "minReplicas": 1, "maxReplicas": 3, "targetInFlight": 4,
                                         "prometheusUrl": "http://prometheus.invalid:9090"}
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*scaled) and kube.get(*hpa) is None, 60, f"the ScaledObject\n{limited.logs()}")
        canary["spec"]["autoscaling"]["maxReplicas"] = 5
        reapply(control_plane, canary)
        wait_for(lambda: (kube.get(*scaled) or {}).get("spec", {}).get("maxReplicaCount") == 5, 60,
                 "the ScaledObject to be updated")
        del canary["spec"]["autoscaling"]
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*hpa) is None and kube.get(*scaled) is None, 60, "the autoscalers to be removed")
        # spec.monitoring.latency: the PrometheusRule is created, changed and deleted with the spec (the
        # Prometheus it names does not exist: the condition says so; the rule does not depend on it)
        rule = ("monitoring.coreos.com/v1", "PrometheusRule", namespace, "m")
        canary["spec"]["monitoring"] = {"latency": {"p99Ms": 250, "prometheusUrl": "http://prometheus.invalid:9090"}}
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*rule), 90, f"the PrometheusRule\n{limited.logs()}")
        canary["spec"]["monitoring"]["latency"]["errorRate"] = 0.01
        reapply(control_plane, canary)
        wait_for(lambda: len((kube.get(*rule) or {}).get("spec", {}).get("groups", [{}])[0].get("rules", [])) == 2,
                 60, "the PrometheusRule to be updated")
        del canary["spec"]["monitoring"]
        reapply(control_plane, canary)
        wait_for(lambda: kube.get(*rule) is None, 60, "the PrometheusRule to be removed")
        # an unresolvable URI: the operator only reads the (missing) Deployment and reports
        apply(control_plane, mdep_manifest("typo", namespace, f"models:/{model_name}@no-such-alias"))
        wait_event(kube, namespace, "typo", "ModelNotFound", "Warning")
        # RBAC denials name the ServiceAccount ("... is forbidden: User \"system:serviceaccount:...\"");
        # "forbidden ... because it is being terminated" is another test's namespace going away.
        denied = [line for line in limited.logs(400).splitlines() if "forbidden: user" in line.lower()]
        assert not denied, denied

    used = _audited(control_plane, f"system:serviceaccount:{installed}:{SA}")
    granted = OPERATOR_NEEDS
    for key, verbs in used.items():
        assert verbs <= granted.get(key, set()), f"used without a grant: {key} {verbs}"
    # a ModelDeployment is read from the watch's cache; it is GET only when a reconcile finds it missing there
    # (a key queued before its object was delivered, or after it was deleted): needed, but not every run
    occasional = {("modelpilot.dev", "modeldeployments"): {"get"}}
    unused = {k: v - used.get(k, set()) - occasional.get(k, set()) for k, v in granted.items()
              if v - used.get(k, set()) - occasional.get(k, set())}
    assert not unused, f"the chart grants what the operator never used: {unused}"


def test_helm_install_with_a_misspelled_value_fails_naming_it(control_plane: ControlPlane) -> None:
    assert control_plane.bin is not None
    out = subprocess.run([str(control_plane.bin / "helm"), "--kubeconfig", str(control_plane.kubeconfig_path),
                          "install", "typo", str(REPO / "charts" / "modelpilot"), "--namespace", "default",
                          "--set", "registry.trackinguri=http://mlflow:5000"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "additional properties 'trackinguri' not allowed" in out.stderr, out.stderr


def test_helm_upgrade_upgrades_the_crd(installed: str, control_plane: ControlPlane, kube: Kube,
                                       tmp_path: Path) -> None:
    """The CRD is a template, not a crds/ file: `helm upgrade` applies a changed CRD (and back again)."""
    import shutil

    assert control_plane.bin is not None
    helm = [str(control_plane.bin / "helm"), "--kubeconfig", str(control_plane.kubeconfig_path)]
    chart = tmp_path / "modelpilot"
    shutil.copytree(REPO / "charts" / "modelpilot", chart)
    crd_file = chart / "files" / "modeldeployments.modelpilot.dev.yaml"
    marker = "Upgraded by helm upgrade (test)."
    crd_file.write_text(crd_file.read_text().replace("What the operator observed.", marker, 1))
    assert marker in crd_file.read_text()

    def status_description() -> str:
        crd = kube.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                  "modeldeployments.modelpilot.dev")
        assert crd is not None
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return str(schema["properties"]["status"]["description"])

    try:
        out = subprocess.run([*helm, "upgrade", RELEASE, str(chart), "--namespace", installed, "--reuse-values",
                              "--wait", "--timeout", "120s"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert status_description().startswith(marker)
    finally:
        out = subprocess.run([*helm, "upgrade", RELEASE, str(REPO / "charts" / "modelpilot"), "--namespace",
                              installed, "--reuse-values", "--wait", "--timeout", "120s"],
                             capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert marker not in status_description()
