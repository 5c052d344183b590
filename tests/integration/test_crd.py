"""The CRD, as the real API server enforces it at `kubectl apply` time."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.controlplane import ControlPlane
from modelpilot.autoscaling import render_hpa, render_scaled_object
from modelpilot.config import Settings
from modelpilot.names import Owner
from modelpilot.registry import ResolvedModel
from modelpilot.render import render_deployment, render_disruption_budget
from modelpilot.spec import parse_spec
from modelpilot.thresholds import render_prometheus_rule
from tests.helpers import REPO, apply, mdep_manifest
from tests.unit.test_pod_template import FULL_TEMPLATE

FULL_SPEC: dict[str, Any] = {
    "replicas": 2,
    "runtime": {"image": "registry.example.com/ml/scorer-extra:1.2", "imagePullPolicy": "IfNotPresent",
                "envFrom": [{"configMapRef": {"name": "tuning"}}, {"secretRef": {"name": "fs"}, "prefix": "FS_"}],
                "volumeMounts": [{"name": "features", "mountPath": "/etc/features", "readOnly": True}]},
    "disruptionBudget": {"minAvailable": "50%"},
    "monitoring": {"maxModelAge": "30d", "latency": {"p99Ms": 250, "errorRate": 0.01, "window": "10m",
                                                     "prometheusUrl": "http://prometheus.monitoring.svc:9090"},
                   "drift": {"warn": 0.1, "alert": 0.3, "window": "2h", "minSamples": 1000,
                             "prometheusUrl": "http://prometheus.monitoring.svc:9090"}},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetInFlight": 8, "targetCPUUtilization": 75,
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60, "policies": [
                        {"type": "Pods", "value": 1, "periodSeconds": 30}]}}},
    "logging": {"sampleRate": 0.05, "sink": {"url": "http://payloads.logging.svc:8080/events"}},
}

pytestmark = pytest.mark.cluster

GOOD = "models:/fraud-detector@champion"


@pytest.mark.parametrize(
    ("manifest_spec", "field", "says"),
    [
        pytest.param({"model": {}}, "spec.model.uri", "Required value", id="no-uri"),
        pytest.param({}, "spec.model", "Required value", id="no-model"),
        pytest.param({"model": {"uri": "s3://bucket/x"}}, "spec.model.uri", "models:/", id="storage-uri"),
        pytest.param({"model": {"uri": "models://profile/x/1"}}, "spec.model.uri", "models:/", id="profile-uri"),
        pytest.param({"model": {"uri": GOOD}, "replicas": -1}, "spec.replicas", "greater than or equal to 0",
                     id="negative-replicas"),
        pytest.param({"model": {"uri": GOOD}, "canary": {"weight": 101}}, "spec.canary.weight",
                     "less than or equal to 100", id="canary-weight-over"),
        pytest.param({"model": {"uri": GOOD}, "canary": {"weight": -5}}, "spec.canary.weight",
                     "greater than or equal to 0", id="canary-weight-under"),
        pytest.param({"model": {"uri": GOOD}, "canary": {"steps": [{"weight": 150}]}}, "spec.canary.steps[0].weight",
                     "less than or equal to 100", id="step-weight"),
        pytest.param({"model": {"uri": GOOD}, "refreshInterval": "soon"}, "spec.refreshInterval", "should match",
                     id="bad-interval"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"variant": "tpu"}}, "spec.runtime.variant",
                     "Unsupported value", id="bad-variant"),
        pytest.param({"model": {"uri": GOOD}, "registry": {"trackingUri": "mlflow:5000"}},
                     "spec.registry.trackingUri", "http(s) URL", id="tracking-uri-no-scheme"),
        pytest.param({"model": {"uri": GOOD}, "registry": {"trackingUri": "http://svc/internal/admin?x="}},
                     "spec.registry.trackingUri", "no query", id="tracking-uri-query"),
        pytest.param({"model": {"uri": GOOD}, "registry": {"trackingUri": "http://u:p@mlflow:5000"}},
                     "spec.registry.trackingUri", "user:password", id="tracking-uri-userinfo"),
        pytest.param({"model": {"uri": GOOD}, "registry": {"trackingUri": "http://mlflow:5000/#x"}},
                     "spec.registry.trackingUri", "fragment", id="tracking-uri-fragment"),
        pytest.param({"model": {"uri": GOOD}, "canary": {"steps": [{"weight": 5}], "analysis": {
            "prometheusUrl": "http://prom:9090/api?x=", "maxErrorRate": 0.1}}},
                     "spec.canary.analysis.prometheusUrl", "no query", id="prometheus-url-query"),
        pytest.param({"model": {"uri": GOOD}, "resources": {"requests": {"cpu": "lots"}}},
                     "spec.resources.requests.cpu", "should match", id="quantity"),
        pytest.param({"model": {"uri": GOOD}, "tolerations": [{"key": "k", "operator": "Sometimes"}]},
                     "spec.tolerations[0].operator", "Unsupported value", id="toleration-operator"),
        pytest.param({"model": {"uri": GOOD}, "tolerations": [{"key": "k", "effect": "Maybe"}]},
                     "spec.tolerations[0].effect", "Unsupported value", id="toleration-effect"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"env": [
            {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
                     "spec.runtime.env[0]", "not both", id="env-value-and-valueFrom"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"env": [{"name": "A", "extra": 1}]}},
                     "spec.runtime.env[0]", "unknown field", id="env-unknown-field"),
        pytest.param({"model": {"uri": GOOD}, "traffic": {"gatewayAPI": {"hostnames": ["Not A Host!"]}}},
                     "spec.traffic.gatewayAPI.hostnames[0]", "should match", id="hostname"),
        pytest.param({"model": {"uri": GOOD}, "traffic": {"gatewayAPI": {"parentRefs": [{"name": "g", "port": 0}]}}},
                     "spec.traffic.gatewayAPI.parentRefs[0].port", "greater than or equal to 1", id="parent-port"),
        pytest.param({"model": {"uri": GOOD}, "auth": {"mode": "apiKey"}}, "spec.auth", "needs apiKeySecretRef",
                     id="api-key-without-secret"),
        pytest.param({"model": {"uri": GOOD}, "auth": {"mode": "oauth"}}, "spec.auth.mode", "Unsupported value",
                     id="auth-mode"),
        pytest.param({"model": {"uri": GOOD}, "auth": {"mode": "apiKey", "apiKeySecretRef": {"name": "A/b"}}},
                     "spec.auth.apiKeySecretRef.name", "should match", id="api-key-secret-name"),
        pytest.param({"model": {"uri": GOOD}, "networkPolicy": {"allowFrom": [{}]}},
                     "spec.networkPolicy.allowFrom[0]", "namespaceSelector, podSelector or both", id="empty-peer"),
        pytest.param({"model": {"uri": GOOD}, "networkPolicy": {"allowFrom": [{"podSelector": {
            "matchExpressions": [{"key": "app", "operator": "Near"}]}}]}},
                     "spec.networkPolicy.allowFrom[0].podSelector.matchExpressions[0].operator", "Unsupported value",
                     id="selector-operator"),
        pytest.param({"model": {"uri": GOOD}, "rollout": {"maxSurge": "fast"}}, "spec.rollout.maxSurge",
                     "or a percentage such as 25%", id="rollout-surge"),
        pytest.param({"model": {"uri": GOOD}, "rollout": {"maxUnavailable": -1}}, "spec.rollout.maxUnavailable",
                     "a number of pods (0 or more)", id="rollout-unavailable"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"volumes": [
            {"name": "root", "hostPath": {"path": "/"}}]}}}, "spec.podTemplate.spec.volumes[0].hostPath",
                     "unknown field", id="host-path-volume"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"volumes": [
            {"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}]}}}, "spec.podTemplate.spec.volumes[0]",
                     "exactly one source", id="two-volume-sources"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"hostNetwork": True}}},
                     "spec.podTemplate.spec.hostNetwork", "unknown field", id="host-network"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"securityContext": {"runAsUser": 0}}}},
                     "spec.podTemplate.spec.securityContext", "restricted Pod Security profile", id="root"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"securityContext": {
            "seccompProfile": {"type": "Unconfined"}}}}}, "spec.podTemplate.spec.securityContext",
                     "RuntimeDefault or Localhost", id="unconfined"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"securityContext": {
            "sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}}}, "spec.podTemplate.spec.securityContext",
                     "only the sysctls", id="unsafe-sysctl"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"metadata": {"labels": {
            "modelpilot.dev/deployment": "other"}}}}, "spec.podTemplate.metadata.labels",
                     "belong to the operator", id="reserved-label"),
        pytest.param({"model": {"uri": GOOD}, "podTemplate": {"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "a", "operator": "In", "values": "a"}]}]}}}}}},
                     "spec.podTemplate.spec.affinity.nodeAffinity", "must be of type array", id="affinity-values"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"imagePullPolicy": "Sometimes"}},
                     "spec.runtime.imagePullPolicy", "Unsupported value", id="pull-policy"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"image": "Not An Image"}}, "spec.runtime.image",
                     "should match", id="image"),
        pytest.param({"model": {"uri": GOOD}, "runtime": {"envFrom": [{"secretRef": {"name": "s"},
                                                                        "namespace": "kube-system"}]}},
                     "spec.runtime.envFrom[0].namespace", "unknown field", id="env-from-namespace"),
        pytest.param({"model": {"uri": GOOD}, "autoscaling": {"minReplicas": 3, "maxReplicas": 2, "targetInFlight": 1}},
                     "spec.autoscaling", "minReplicas must not be above maxReplicas", id="autoscaling-bounds"),
        pytest.param({"model": {"uri": GOOD}, "autoscaling": {"maxReplicas": 2}},
                     "spec.autoscaling", "set targetInFlight or targetCPUUtilization", id="autoscaling-no-target"),
        pytest.param({"model": {"uri": GOOD}, "autoscaling": {"maxReplicas": 2, "targetInFlight": 1, "behavior": {
            "scaleUp": {"policies": [{"type": "Pods", "value": "four", "periodSeconds": 15}]}}}},
                     "spec.autoscaling.behavior.scaleUp.policies[0].value", "must be of type integer",
                     id="autoscaling-behavior"),
        pytest.param({"model": {"uri": GOOD}, "canary": {"steps": [{"weight": 5}], "capacity": "steal"}},
                     "spec.canary.capacity", "Unsupported value", id="canary-capacity"),
        pytest.param({"model": {"uri": GOOD}, "autoscaling": {"maxReplicas": 2, "targetInFlight": 1,
                                                               "engine": "knative"}},
                     "spec.autoscaling.engine", "Unsupported value", id="autoscaling-engine"),
        pytest.param({"model": {"uri": GOOD}, "logging": {"sink": {"url": "http://u:p@sink/"}}},
                     "spec.logging.sink.url", "no user:password@", id="logging-credentials"),
        pytest.param({"model": {"uri": GOOD}, "logging": {"sampleRate": 2, "sink": {"url": "http://sink"}}},
                     "spec.logging.sampleRate", "less than or equal to 1", id="logging-rate"),
        pytest.param({"model": {"uri": GOOD}, "monitoring": {"maxModelAge": "a month"}},
                     "spec.monitoring.maxModelAge", "should match", id="max-model-age"),
        pytest.param({"model": {"uri": GOOD}, "monitoring": {"latency": {"window": "5m"}}},
                     "spec.monitoring.latency", "set p99Ms or errorRate", id="latency-no-threshold"),
        pytest.param({"model": {"uri": GOOD}, "monitoring": {"drift": {"warn": 0.3}}},
                     "spec.monitoring.drift", "warn must not be above alert", id="drift-warn-above-alert"),
        pytest.param({"model": {"uri": GOOD}, "monitoring": {"drift": {"alert": 0}}},
                     "spec.monitoring.drift.alert", "greater than 0", id="drift-alert-zero"),
        pytest.param({"model": {"uri": GOOD}, "monitoring": {"drift": {"prometheusUrl": "http://u:p@prom"}}},
                     "spec.monitoring.drift.prometheusUrl", "no user:password@", id="drift-prometheus-credentials"),
        pytest.param({"model": {"uri": GOOD}, "disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
                     "spec.disruptionBudget", "at most 1", id="budget-both"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(
        control_plane: ControlPlane, namespace: str, manifest_spec: dict[str, Any], field: str, says: str) -> None:
    manifest = mdep_manifest("bad", namespace, GOOD)
    manifest["spec"] = manifest_spec
    result = apply(control_plane, manifest)
    assert result.returncode != 0, "the API server accepted an invalid spec"
    assert field in result.stderr and says in result.stderr, result.stderr


def test_name_must_fit_the_children(control_plane: ControlPlane, namespace: str) -> None:
    result = apply(control_plane, mdep_manifest("x" * 60, namespace, GOOD))
    assert result.returncode != 0 and "56 characters" in result.stderr, result.stderr


def test_valid_spec_is_accepted_with_dry_run(control_plane: ControlPlane, namespace: str) -> None:
    manifest = mdep_manifest("ok", namespace, GOOD, replicas=0, refreshInterval="1h30m",
                             runtime={"variant": "gpu", "batching": {"maxBatchSize": 8, "maxDelayMs": 2.5}},
                             resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "gpu": 1},
                             canary={"model": {"uri": "models:/fraud-detector@challenger"}, "weight": 10,
                                     "capacity": "borrow"},
                             auth={"mode": "kubernetes", "audience": "https://models.example.com/fraud"},
                             rollout={"maxSurge": 0, "maxUnavailable": "50%"},
                             networkPolicy={"allowFrom": [{"namespaceSelector": {}, "podSelector": {
                                 "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}}]})
    import json

    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, result.stderr


def test_the_crds_kubernetes_types_are_generated_from_kubernetes_own_openapi() -> None:
    """hack/crd_schemas.py (make crd) writes them; a hand edit or a new Kubernetes version shows up here."""
    out = subprocess.run([sys.executable, "-m", "hack.crd_schemas", "--check"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_a_full_pod_template_is_admitted_under_the_restricted_pod_security_profile(
        control_plane: ControlPlane, namespace: str) -> None:
    """The ModelDeployment is accepted; the Deployment rendered from it is accepted; its pod is admitted in a
    namespace that enforces the restricted profile, with every field the template sets."""
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                          "pod-security.kubernetes.io/warn=restricted")
    control_plane.kubectl("create", "serviceaccount", "fraud-s3-reader", "-n", namespace)
    spec = {**FULL_SPEC, "podTemplate": copy.deepcopy(FULL_TEMPLATE)}
    manifest = mdep_manifest("full", namespace, GOOD, **{k: v for k, v in spec.items() if k != "model"})
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert out.returncode == 0, out.stderr
    settings = Settings(default_tracking_uri="http://mlflow:5000", allowed_images=("registry.example.com/ml/",))
    parsed = parse_spec(manifest["spec"], settings)
    owner = Owner("full", namespace, "1234")
    resolved = ResolvedModel(name="fraud-detector", version="3")
    deployment = render_deployment(owner, parsed, resolved, settings)
    deployment["metadata"].pop("ownerReferences")  # (the owner does not exist: a dry run)
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(deployment), check=False)
    assert out.returncode == 0 and "violate" not in out.stderr, out.stderr
    template = deployment["spec"]["template"]
    # a PriorityClass and a RuntimeClass of these names would have to exist for the pod itself
    template["spec"].pop("priorityClassName")
    template["spec"].pop("runtimeClassName")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": "full-pod",
                                                           "namespace": namespace}, "spec": template["spec"]}
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode == 0, out.stderr
    assert parsed.disruption_budget is not None and parsed.autoscaling is not None
    assert parsed.latency is not None and parsed.drift is not None and parsed.drift.alert == 0.3
    keda = parse_spec({**manifest["spec"], "autoscaling": {
        **FULL_SPEC["autoscaling"], "engine": "keda", "prometheusUrl": "http://prometheus.monitoring.svc:9090"}},
        settings).autoscaling
    assert keda is not None
    # each against the real schema of its kind: policy/v1, autoscaling/v2, the Prometheus Operator's and KEDA's CRDs
    for child in (render_disruption_budget(owner, parsed.disruption_budget),
                  render_hpa(owner, parsed.autoscaling, freeze_scale_down=True),
                  render_prometheus_rule(owner, parsed.latency, "fraud-detector"),
                  render_scaled_object(owner, keda, "fraud-detector", freeze_scale_down=True)):
        child["metadata"].pop("ownerReferences")
        out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(child), check=False)
        assert out.returncode == 0, out.stderr


def test_explain_reads_descriptions(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("explain", "modeldeployment.spec.model.uri").stdout
    assert "models:/NAME@ALIAS" in out
    out = control_plane.kubectl("explain", "mdep.spec.refreshInterval").stdout
    assert "re-resolved" in out
    out = control_plane.kubectl("explain", "mdep.spec.podTemplate.spec.affinity.nodeAffinity").stdout
    assert "requiredDuringSchedulingIgnoredDuringExecution" in out
    out = control_plane.kubectl("explain", "mdep.spec.podTemplate.spec.volumes").stdout
    assert "restricted Pod Security profile" in out and "hostPath" not in out


EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if "kind: ModelDeployment" in p.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_modeldeployment_is_accepted_by_the_api_server_and_the_operator(
        control_plane: ControlPlane, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment"]
    assert docs
    for doc in docs:
        doc["metadata"]["namespace"] = "default"
        out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
        # (raises InvalidSpec; the platform example's image is on the allowlist its comment names)
        parse_spec(doc["spec"], Settings(default_tracking_uri="http://mlflow:5000",
                                         allowed_images=("registry.example.com/ml/",)))
