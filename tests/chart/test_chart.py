"""The Helm chart with real tools: helm lint/template, offline schema validation, checkov, the values schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.controlplane import ensure_binaries
from tests.helpers import REPO

CHART = REPO / "charts" / "modelpilot"
VALUES = sorted((Path(__file__).parent / "values").glob("*.yaml"))
K8S_VERSION = "1.36.3"

# checkov findings we accept, each with the reason (everything else fails the test).
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are referenced by tag; platform teams pin digests through values (image.tag)",
    "CKV_K8S_15": "IfNotPresent is right for immutable release tags; Always is one value away",
    "CKV_K8S_38": "the operator talks to the API server: it needs its ServiceAccount token",
    "CKV_K8S_9": "a readiness probe means nothing for a single-replica controller that serves no traffic; "
                 "the liveness probe restarts it when its watches die",
    "CKV_K8S_11": "no CPU limit on purpose: throttling a controller only delays reconciles",
}

#: Exactly what the operator's code calls (operator/modelpilot/kube.py and kopf's watches).
OPERATOR_NEEDS = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},  # kopf's resource discovery
    ("modelpilot.dev", "modeldeployments"): {"get", "list", "watch"},
    ("modelpilot.dev", "modeldeployments/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("monitoring.coreos.com", "prometheusrules"): {"get", "list", "watch", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
    # leader election (operator/modelpilot/leader.py), in the release namespace, on its one Lease
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_binaries() / "helm")


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run([helm, "template", "mp", str(CHART), "--namespace", "modelpilot-system",
                          "--kube-version", K8S_VERSION, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rules_of(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_lint(helm: str) -> None:
    for values in [None, *VALUES]:
        args = ["-f", str(values)] if values else []
        out = subprocess.run([helm, "lint", "--strict", str(CHART), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", [None, *VALUES], ids=lambda v: v.stem if v else "defaults")
def test_rendered_manifests_validate_against_kubernetes_schemas(helm: str, values: Path | None) -> None:
    import kubernetes_validate

    docs = render(helm, *(["-f", str(values)] if values else []))
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "gateway.networking.k8s.io/")):
            continue  # CRDs (Prometheus Operator, Gateway API) are not part of the Kubernetes schemas
        kubernetes_validate.validate(doc, "1.36.0", strict=True)


def test_secure_pod_defaults(helm: str) -> None:
    dep = next(d for d in render(helm) if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELPILOT_LEADER_ELECTION"] == "true"
    assert next(d for d in render(helm) if d["kind"] == "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_settings_flow_from_values_to_the_operator(helm: str) -> None:
    from modelpilot.config import Settings

    dep = next(d for d in render(helm, "--set", "registry.trackingUri=http://mlflow:5000",
                                 "--set", "registry.refreshInterval=2m") if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert set(env) <= set(Settings().env_names()), "every variable the chart sets is a documented setting"
    settings = Settings.from_env(env)
    assert settings.default_tracking_uri == "http://mlflow:5000" and settings.default_refresh_seconds == 120


def test_rbac_is_exactly_what_the_operator_uses(helm: str) -> None:
    docs = render(helm)
    assert rules_of(docs) == OPERATOR_NEEDS
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    assert lease_role["metadata"]["namespace"] == "modelpilot-system"
    named = [r for r in lease_role["rules"] if "resourceNames" in r]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["mp-modelpilot"],
                      "verbs": ["get", "update"]}]
    assert {d["kind"] for d in docs} >= {"ClusterRole", "ClusterRoleBinding"}


def test_namespaced_mode_grants_nothing_cluster_wide(helm: str) -> None:
    docs = render(helm, "-f", str(Path(__file__).parent / "values" / "namespaced.yaml"))
    kinds = [d["kind"] for d in docs]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role") == [
        "modelpilot-system", "team-a", "team-b"]  # the leader Lease lives in the release namespace
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_crd_in_chart_is_the_repository_crd(helm: str) -> None:
    copy = (CHART / "files" / "modeldeployments.modelpilot.dev.yaml").read_text()
    assert copy == (REPO / "crds" / "modeldeployments.modelpilot.dev.yaml").read_text(), \
        "the chart's CRD is generated from crds/: run `make crd`"
    crd = next(d for d in render(helm) if d["kind"] == "CustomResourceDefinition")
    source = yaml.safe_load(copy)
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not [d for d in render(helm, "--set", "crds.install=false") if d["kind"] == "CustomResourceDefinition"]


@pytest.mark.parametrize(
    ("setting", "named"),
    [pytest.param("registry.trackinguri=x", "trackinguri", id="typo-nested"),
     pytest.param("replicas=2", "replicas", id="unknown-top-level"),
     pytest.param("metrics.servicemonitor.enabled=true", "servicemonitor", id="typo-deep"),
     pytest.param("logLevel=verbose", "logLevel", id="bad-enum")],
)
def test_misspelled_values_fail_naming_them(helm: str, setting: str, named: str) -> None:
    out = subprocess.run([helm, "template", "mp", str(CHART), "--set", setting], capture_output=True, text=True)
    assert out.returncode != 0 and named in out.stderr, out.stderr


def test_every_value_is_documented() -> None:
    """Every leaf value (or documented block, like `resources`) has a comment right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    skip_deeper_than: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None and indent > skip_deeper_than:
            continue  # inside a documented block value
        skip_deeper_than = None
        key = stripped.split(":", 1)[0]
        documented = lines[i - 1].strip().startswith("#")
        if stripped.endswith(":"):
            if documented:
                skip_deeper_than = indent  # a documented block value: its children are the example
            continue  # otherwise a section header: its keys are checked one by one
        assert documented, f"values.yaml line {i + 1} ({key}) has no comment above it"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False


@pytest.fixture(scope="module")
def checkov() -> str:
    venv = REPO / ".tools" / "checkov"
    exe = venv / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "checkov==3.3.30"], check=True)
    return str(exe)


def test_checkov_finds_nothing_unjustified(helm: str, checkov: str, tmp_path: Path) -> None:
    docs = render(helm, "-f", str(Path(__file__).parent / "values" / "everything.yaml"))
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "CustomResourceDefinition"]))
    out = subprocess.run([checkov, "-f", str(manifest), "--framework", "kubernetes", "--output", "json",
                          "--skip-check", ",".join(CHECKOV_SKIPS), "--quiet", "--compact"],
                         capture_output=True, text=True)
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["check_name"], c["resource"]) for r in reports
              for c in r.get("results", {}).get("failed_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert not failed, "\n".join(map(str, failed))
    assert passed > 20, "checkov ran its Kubernetes checks"


def test_name_overrides(helm: str) -> None:
    docs = render(helm, "--set", "fullnameOverride=pilot")
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "ServiceAccount", "ClusterRole")}
    assert names == {"pilot"}
    docs = render(helm, "--set", "nameOverride=autopilot")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["metadata"]["name"] == "mp-autopilot"
    assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == "autopilot"
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "autopilot"


def test_an_existing_service_account_is_used_and_not_created(helm: str) -> None:
    docs = render(helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=platform-operator")
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "platform-operator"
    out = subprocess.run([helm, "template", "mp", str(CHART), "--set", "serviceAccount.create=false"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "set serviceAccount.name" in out.stderr, out.stderr


def test_registry_allowlist_reaches_the_operator(helm: str) -> None:
    from modelpilot.config import Settings

    dep = next(d for d in render(helm, "--set-json", 'registry.allowedUrls=["https://a.svc","https://b.svc/x"]')
               if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert Settings.from_env(env).allowed_registry_urls == ("https://a.svc", "https://b.svc/x")
    default = next(d for d in render(helm) if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in default["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert Settings.from_env(env).allowed_registry_urls == ()


def test_serving_pod_platform_defaults_reach_the_operator(helm: str) -> None:
    from modelpilot.config import Settings

    def settings(*args: str) -> Settings:
        dep = next(d for d in render(helm, *args) if d["kind"] == "Deployment")
        return Settings.from_env({e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
                                  if "value" in e})

    chosen = settings("-f", str(Path(__file__).parent / "values" / "everything.yaml"))
    assert chosen.allowed_images == ("registry.example.com/ml/", "ghcr.io/acme/scorer")
    assert chosen.server_image_pull_secrets == ("regcred",)
    assert dict(chosen.server_node_selector) == {"pool": "inference", "topology.kubernetes.io/zone": "eu-west-1a"}
    assert chosen.server_tolerations == ({"key": "inference", "operator": "Exists", "effect": "NoSchedule"},)
    default = settings()
    assert (default.allowed_images, default.server_image_pull_secrets, default.server_node_selector,
            default.server_tolerations) == ((), (), (), ())


def test_kubernetes_auth_namespaces_get_a_serving_account_that_may_only_review_tokens(helm: str) -> None:
    assert not [d for d in render(helm) if "token-reviewer" in d["metadata"]["name"]]  # off by default
    docs = render(helm, "--set", "scoringServer.auth.kubernetesNamespaces={team-a,team-b}")
    accounts = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs
                      if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "modelpilot-serving")
    assert accounts == [("team-a", "modelpilot-serving"), ("team-b", "modelpilot-serving")]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-token-reviewer")]
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"
                  and d["metadata"]["name"].endswith("-token-reviewer")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelpilot-serving", "namespace": ns}
                                   for ns in ("team-a", "team-b")]
    env = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELPILOT_SERVER_AUTH_SERVICE_ACCOUNT", "value": "modelpilot-serving"} in env


def test_the_webhook_route_sends_only_mlflows_posts_to_the_webhook_service(helm: str) -> None:
    docs = render(helm, "-f", str(Path(__file__).parent / "values" / "webhooks.yaml"))
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webhooks"))
    (route,) = [d for d in docs if d["kind"] == "HTTPRoute"]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["modelpilot-hooks.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "Exact", "value": "/webhooks/mlflow"}, "method": "POST"}]
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    assert not [d for d in render(helm) if d["kind"] == "HTTPRoute"], "off by default"
    out = subprocess.run([helm, "template", "mp", str(CHART), "--set", "webhooks.enabled=true", "--set",
                          "webhooks.secretName=s", "--set", "webhooks.httpRoute.enabled=true"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "parentRefs" in out.stderr


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
              for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_grafana_dashboard_ships_for_the_sidecar_and_only_plots_metrics_that_exist(helm: str) -> None:
    import re

    assert not [d for d in render(helm) if d["kind"] == "ConfigMap"], "opt-in"
    (config_map,) = [d for d in render(helm, "--set", "grafanaDashboard.enabled=true", "--set",
                                       "grafanaDashboard.namespace=monitoring") if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(config_map["data"]["modelpilot-models.json"])
    assert dashboard["uid"] == "modelpilot-models" and len(dashboard["panels"]) >= 8
    exported = set()
    for source in (REPO / "serving-image" / "modelpilot_serve" / "metrics.py", REPO / "operator" / "modelpilot" /
                   "metrics.py"):
        exported |= set(re.findall(r'"(modelpilot_[a-z_]+)"', source.read_text()))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in dashboard_queries(dashboard)
            for m in re.findall(r"\b(modelpilot_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
    grids = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(grids) == len(set(grids)), "no two panels on the same spot"


def _outside_the_schema(ours: Any, read: Any, path: str = "") -> list[str]:
    """Where `read` (ours as Grafana's models read it back) lost or changed something of `ours`."""
    if isinstance(ours, dict):
        if not isinstance(read, dict):
            return [f"{path} read as {type(read).__name__}"]
        return [problem for key, value in ours.items()
                for problem in ([f"{path}.{key} is not in the schema"] if key not in read
                                else _outside_the_schema(value, read[key], f"{path}.{key}"))]
    if isinstance(ours, list):
        if not isinstance(read, list) or len(read) != len(ours):
            return [f"{path} read differently"]
        return [problem for i, (a, b) in enumerate(zip(ours, read, strict=True))
                for problem in _outside_the_schema(a, b, f"{path}[{i}]")]
    return [] if ours == read else [f"{path}: {ours!r} read as {read!r}"]


def test_the_grafana_dashboard_fits_grafanas_dashboard_schema() -> None:
    """Grafana publishes its dashboard schema as generated code, not as a JSON Schema: the Grafana Foundation
    SDK's models. The dashboard read into them and written back must come out unchanged: a key the schema
    does not have is lost on the way (a misspelled one, a field of another Grafana version), a value of
    another shape is read differently."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    def read_back(dashboard: dict[str, Any]) -> Any:
        return json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))

    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert _outside_the_schema(dashboard, read_back(dashboard)) == []
    misspelled = json.loads(json.dumps(dashboard))
    misspelled["panels"][0]["gridpos"] = misspelled["panels"][0].pop("gridPos")
    misspelled["templating"]["list"][0]["definition"] = "written by Grafana's editor, not in the schema"
    assert set(_outside_the_schema(misspelled, read_back(misspelled))) == {
        ".panels[0].gridpos is not in the schema", ".templating.list[0].definition is not in the schema"}
