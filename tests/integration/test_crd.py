"""The CRD, as the real API server enforces it at `kubectl apply` time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.controlplane import ControlPlane
from modelpilot.config import Settings
from modelpilot.spec import parse_spec
from tests.helpers import REPO, apply, mdep_manifest

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
                             canary={"model": {"uri": "models:/fraud-detector@challenger"}, "weight": 10},
                             auth={"mode": "kubernetes", "audience": "https://models.example.com/fraud"},
                             rollout={"maxSurge": 0, "maxUnavailable": "50%"},
                             networkPolicy={"allowFrom": [{"namespaceSelector": {}, "podSelector": {
                                 "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}}]})
    import json

    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, result.stderr


def test_explain_reads_descriptions(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("explain", "modeldeployment.spec.model.uri").stdout
    assert "models:/NAME@ALIAS" in out
    out = control_plane.kubectl("explain", "mdep.spec.refreshInterval").stdout
    assert "re-resolved" in out


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
        parse_spec(doc["spec"], Settings(default_tracking_uri="http://mlflow:5000"))  # raises InvalidSpec
