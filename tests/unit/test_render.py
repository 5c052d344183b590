"""Rendering is pure: spec + resolved version in, manifests out."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpilot import names, render
from modelpilot.config import Settings
from modelpilot.registry import ResolvedModel
from modelpilot.spec import InvalidSpec, parse_spec

SETTINGS = Settings(default_tracking_uri="http://mlflow.mlflow.svc:5000")
OWNER = names.Owner(name="fraud", namespace="risk", uid="1234-abcd")
RESOLVED = ResolvedModel(name="fraud-detector", version="7", run_id="r1", source="mlflow-artifacts:/1/x",
                         alias="champion")


def build(spec: dict[str, Any], resolved: ResolvedModel = RESOLVED) -> dict[str, Any]:
    return render.render_deployment(OWNER, parse_spec(spec, SETTINGS), resolved, SETTINGS)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def env(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


BASE = {"model": {"uri": "models:/fraud-detector@champion"}}


def test_pins_resolved_version_never_the_alias() -> None:
    dep = build(BASE)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["modelpilot.dev/model-name"] == "fraud-detector"
    assert labels["modelpilot.dev/model-version"] == "7"
    assert container(dep)["args"] == ["--model-uri", "models:/fraud-detector/7"]
    assert env(dep)["MODELPILOT_MODEL_URI"] == "models:/fraud-detector/7"
    assert "@champion" not in json.dumps(container(dep))
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["modelpilot.dev/resolved-from"] == "models:/fraud-detector@champion"
    assert annotations["modelpilot.dev/run-id"] == "r1"


def test_owner_reference_and_selector() -> None:
    dep = build(BASE)
    (ref,) = dep["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud",
                   "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    svc = render.render_service(OWNER, SETTINGS)
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["metadata"]["ownerReferences"] == [ref]


def test_version_change_changes_only_what_it_must() -> None:
    """A new version rolls the pods (template changes) but never the immutable selector."""
    a, b = build(BASE), build(BASE, ResolvedModel(name="fraud-detector", version="8"))
    assert a["spec"]["selector"] == b["spec"]["selector"]
    assert a["spec"]["template"] != b["spec"]["template"]


def test_render_is_deterministic_and_does_not_mutate_input() -> None:
    spec = {**BASE, "replicas": 3, "tolerations": [{"key": "a", "operator": "Exists"}]}
    before = copy.deepcopy(spec)
    assert build(spec) == build(spec)
    assert spec == before


def test_probes_and_security_defaults() -> None:
    c = container(build(BASE))
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    pod = build(BASE)["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_probes_and_the_probe_process_and_startup_waits_for_the_model() -> None:
    c = container(build(BASE))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "health": 8081}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    settings = Settings(default_tracking_uri="http://mlflow:5000", server_probe_port="health")
    on_health = container(render.render_deployment(OWNER, parse_spec(BASE, settings), RESOLVED, settings))
    assert {on_health[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe", "startupProbe")} == {"health"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert budget >= 600, "large models get minutes to download and load"
    assert env(build(BASE))["MODELPILOT_HEALTH_PORT"] == "8081"


@pytest.mark.parametrize(
    ("resources", "requests", "limits"),
    [
        pytest.param({}, {"cpu": "100m", "memory": "256Mi"}, {"memory": "8Gi"}, id="none-set: both defaults"),
        pytest.param({"requests": {"memory": "16Gi"}}, {"memory": "16Gi"}, None, id="requests-set: no default limit"),
        pytest.param({"limits": {"cpu": "2"}}, {"cpu": "100m", "memory": "256Mi"}, {"cpu": "2"},
                     id="limits-set: default requests"),
    ],
)
def test_platform_default_resources(resources: dict[str, Any], requests: dict[str, str],
                                    limits: dict[str, str] | None) -> None:
    settings = Settings(default_tracking_uri="http://mlflow:5000", server_default_limits="memory=8Gi")
    dep = render.render_deployment(OWNER, parse_spec({**BASE, "resources": resources}, settings), RESOLVED, settings)
    assert container(dep)["resources"].get("requests") == requests
    assert container(dep)["resources"].get("limits") == limits
    none = Settings(default_tracking_uri="http://mlflow:5000", server_default_requests="none")
    assert "resources" not in container(
        render.render_deployment(OWNER, parse_spec(BASE, none), RESOLVED, none))


def test_tmp_is_a_sized_empty_dir() -> None:
    volumes = build(BASE)["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}}]


@pytest.mark.parametrize(
    ("runtime", "resources", "image", "gpus"),
    [
        pytest.param({}, {}, SETTINGS.server_image_cpu, None, id="cpu-default"),
        pytest.param({"variant": "gpu"}, {}, SETTINGS.server_image_gpu, 1, id="gpu-default-one"),
        pytest.param({"variant": "gpu"}, {"gpu": 2, "limits": {"memory": "8Gi"}}, SETTINGS.server_image_gpu, 2,
                     id="gpu-two"),
    ],
)
def test_variants(runtime: dict[str, Any], resources: dict[str, Any], image: str, gpus: int | None) -> None:
    dep = build({**BASE, "runtime": runtime, "resources": resources})
    c = container(dep)
    assert c["image"] == image
    assert c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == gpus
    tolerations = dep["spec"]["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == (gpus is not None)


def test_env_names_are_the_ones_modelpilot_serve_reads() -> None:
    """The operator and the scoring server agree on every MODELPILOT_* variable."""
    from modelpilot_serve.settings import parser

    helps = " ".join(a.help or "" for a in parser()._actions)
    for name in env(build(BASE)):
        if name.startswith("MODELPILOT_"):
            assert f"[{name}]" in helps, f"modelpilot-serve does not read {name}"


def test_runtime_settings_reach_the_server() -> None:
    assert env(build(BASE))["MODELPILOT_BATCHING_MODE"] == "auto"
    dep = build({**BASE, "runtime": {"workers": 3, "batching": {"maxBatchSize": 64, "maxDelayMs": 2.5,
                                                                 "mode": "off"},
                                     "env": [{"name": "OMP_NUM_THREADS", "value": "1"},
                                             {"name": "MODELPILOT_MODEL_URI", "value": "evil"}]}})
    e = env(dep)
    assert (e["MODELPILOT_WORKERS"], e["MODELPILOT_MAX_BATCH_SIZE"], e["MODELPILOT_MAX_BATCH_DELAY_MS"],
            e["MODELPILOT_BATCHING_MODE"]) == ("3", "64", "2.5", "off")
    assert e["OMP_NUM_THREADS"] == "1"
    assert e["MODELPILOT_MODEL_URI"] == "models:/fraud-detector/7", "user env cannot override the pin"


def test_credentials_reach_the_pod_by_reference_only() -> None:
    dep = build({**BASE, "registry": {"credentialsSecretRef": {"name": "mlflow-auth"}}})
    e = env(dep)
    assert e["MLFLOW_TRACKING_TOKEN"] == {"secretKeyRef": {"name": "mlflow-auth", "key": "token", "optional": True}}
    assert e["MLFLOW_TRACKING_URI"] == SETTINGS.default_tracking_uri


LABEL = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?)?$")


@given(st.text(min_size=1, max_size=300))
def test_label_value_is_always_valid(text: str) -> None:
    value = names.label_value(text)
    assert LABEL.match(value), value


def test_label_value_keeps_clean_names_and_separates_mangled_ones() -> None:
    assert names.label_value("fraud-detector") == "fraud-detector"
    assert names.label_value("a b") != names.label_value("a/b")
    assert len(names.label_value("x" * 100)) <= 63


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({}, "spec.model.uri", id="no-model"),
        pytest.param({"model": {}}, "spec.model.uri", id="no-uri"),
        pytest.param({"model": {"uri": "s3://b/x"}}, "spec.model.uri", id="storage-uri"),
        pytest.param({**BASE, "replicas": -1}, "spec.replicas", id="negative-replicas"),
        pytest.param({**BASE, "replicas": "3"}, "spec.replicas", id="string-replicas"),
        pytest.param({**BASE, "refreshInterval": "soon"}, "spec.refreshInterval", id="bad-interval"),
        pytest.param({**BASE, "runtime": {"variant": "tpu"}}, "spec.runtime.variant", id="bad-variant"),
        pytest.param({**BASE, "resources": {"gpu": 1}}, "spec.resources.gpu", id="gpu-on-cpu"),
        pytest.param({**BASE, "runtime": {"workers": 0}}, "spec.runtime.workers", id="zero-workers"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec, SETTINGS)
    assert field in str(err.value)


def test_no_tracking_uri_anywhere_is_a_clear_error() -> None:
    with pytest.raises(InvalidSpec, match="trackingUri"):
        parse_spec(BASE, Settings())


def test_spec_defaults() -> None:
    spec = parse_spec(BASE, SETTINGS)
    assert (spec.replicas, spec.refresh_seconds, spec.runtime.variant, spec.runtime.workers) == (1, 60.0, "cpu", 1)
    assert spec.credentials_secret is None
    assert parse_spec(BASE, Settings(default_tracking_uri="http://x", default_credentials_secret="d")
                      ).credentials_required is False


def test_no_auth_adds_nothing_to_the_pod_and_env_cannot_switch_a_guard_on_or_off() -> None:
    dep = build({**BASE, "runtime": {"env": [{"name": "MODELPILOT_AUTH_MODE", "value": "none"},
                                             {"name": "MODELPILOT_KUBE_API_URL", "value": "https://evil"}]}})
    assert not [k for k in env(dep) if k.startswith(("MODELPILOT_AUTH_", "MODELPILOT_KUBE_"))]
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    keyed = build({**BASE, "auth": {"mode": "apiKey", "apiKeySecretRef": {"name": "fraud-keys"}},
                   "runtime": {"env": [{"name": "MODELPILOT_AUTH_MODE", "value": "none"}]}})
    assert env(keyed)["MODELPILOT_AUTH_MODE"] == "api-key"
    assert [e["name"] for e in container(keyed)["env"]].count("MODELPILOT_AUTH_MODE") == 1


def test_api_key_auth_mounts_the_named_secret_read_only() -> None:
    dep = build({**BASE, "auth": {"mode": "apiKey", "apiKeySecretRef": {"name": "fraud-keys"}}})
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "fraud-keys", "defaultMode": 0o444}} in pod["volumes"]
    assert {"name": "api-keys", "mountPath": render.API_KEYS_DIR, "readOnly": True} in container(dep)["volumeMounts"]
    assert env(dep)["MODELPILOT_AUTH_API_KEYS_DIR"] == render.API_KEYS_DIR
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod


def test_kubernetes_auth_runs_as_the_token_reviewing_account_for_this_model() -> None:
    dep = build({**BASE, "auth": {"mode": "kubernetes", "audience": "fraud.risk"}})
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SETTINGS.server_auth_service_account
    assert pod["automountServiceAccountToken"] is True
    assert env(dep)["MODELPILOT_AUTH_MODE"] == "kubernetes"
    assert env(dep)["MODELPILOT_AUTH_RESOURCE"] == "risk/fraud"
    assert env(dep)["MODELPILOT_AUTH_AUDIENCE"] == "fraud.risk"


@pytest.mark.parametrize(("auth", "message"), [
    ({"mode": "apiKey"}, "needs spec.auth.apiKeySecretRef.name"),
    ({"mode": "apiKey", "apiKeySecretRef": {"name": "../etc"}}, "must be a Secret name"),
    ({"mode": "mtls"}, "spec.auth.mode must be one of none, kubernetes, apiKey"),
    ({"audience": 3}, "spec.auth.audience must be a string"),
])
def test_bad_auth_names_the_field(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        parse_spec({**BASE, "auth": auth}, SETTINGS)


def test_allow_from_renders_an_owned_ingress_policy_for_every_track() -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"team": "checkout"}}},
             {"podSelector": {"matchLabels": {"app": "gateway"}}, "namespaceSelector": {}}]
    spec = parse_spec({**BASE, "networkPolicy": {"allowFrom": peers}}, SETTINGS)
    policy = render.render_network_policy(OWNER, spec)
    assert policy["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert policy["spec"]["podSelector"] == {"matchLabels": {names.LABEL_DEPLOYMENT: "fraud"}}
    assert policy["spec"]["ingress"] == [{"from": peers, "ports": [{"protocol": "TCP", "port": "http"}]}]
    assert parse_spec(BASE, SETTINGS).allow_from == ()


@pytest.mark.parametrize("policy", [{"allowFrom": []}, {"allowFrom": [{}]}, {"allowFrom": [{"ipBlock": {}}]},
                                    {"allowFrom": [{"podSelector": "app=x"}]}, {"allowFrom": "everyone"}])
def test_bad_allow_from_names_the_field(policy: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec, match=re.escape("spec.networkPolicy.allowFrom")):
        parse_spec({**BASE, "networkPolicy": policy}, SETTINGS)


def test_rollout_knobs_reach_the_deployment_strategy() -> None:
    strategy = build(BASE)["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    gpu_tight = build({**BASE, "rollout": {"maxSurge": 0, "maxUnavailable": 1}})["spec"]["strategy"]
    assert gpu_tight["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert build({**BASE, "rollout": {"maxSurge": "50%"}})["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "50%"


@pytest.mark.parametrize("rollout, says", [
    ({"maxSurge": 0, "maxUnavailable": 0}, "cannot both be 0"),
    ({"maxSurge": "0%", "maxUnavailable": "0%"}, "cannot both be 0"),
    ({"maxSurge": "fast"}, "spec.rollout.maxSurge"),
    ({"maxUnavailable": -1}, "spec.rollout.maxUnavailable"),
    ({"maxUnavailable": True}, "spec.rollout.maxUnavailable"),
    ({"maxSurge": "%"}, "spec.rollout.maxSurge"),
    ("fast", "spec.rollout must be an object"),
])
def test_rollout_knobs_that_could_never_roll_or_are_not_amounts_are_invalid(rollout: Any, says: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(says)):
        build({**BASE, "rollout": rollout})


def test_two_or_more_replicas_are_spread_across_nodes_softly_and_one_is_not() -> None:
    assert "topologySpreadConstraints" not in build(BASE)["spec"]["template"]["spec"]
    dep = build({**BASE, "replicas": 3})
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway" and spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    split = render.render_deployment(OWNER, parse_spec({**BASE, "replicas": 3}, SETTINGS), RESOLVED, SETTINGS,
                                     replicas=1)
    assert split["spec"]["template"] == dep["spec"]["template"], "a canary split never changes the pod template"


def test_empty_env_values_are_rendered_as_the_api_server_stores_them() -> None:
    """`value: ""` comes back from the API server without `value`: rendered with it, the live Deployment never
    "contains" the render and every reconcile applied it again (kubernetes auth's MODELPILOT_KUBE_API_URL)."""
    dep = build({**BASE, "auth": {"mode": "kubernetes"}, "runtime": {"env": [{"name": "EMPTY", "value": ""}]}})
    rendered = container(dep)["env"]
    assert {"name": "MODELPILOT_KUBE_API_URL"} in rendered and {"name": "EMPTY"} in rendered
    assert not [e for e in rendered if e.get("value") == ""]


def test_payload_logging_reaches_the_scoring_server_only_when_asked_for() -> None:
    assert not [k for k in env(build(BASE)) if k.startswith(("MODELPILOT_PAYLOAD", "MODELPILOT_TRACK"))], \
        "without spec.logging the pod template does not change (no restart of every model on upgrade)"
    spec = {**BASE, "logging": {"sampleRate": 0.1, "sink": {"url": "http://sink.logs.svc:8080/events"}}}
    dep = render.render_deployment(OWNER, parse_spec(spec, SETTINGS), RESOLVED, SETTINGS, track=names.CANARY)
    e = env(dep)
    assert e["MODELPILOT_PAYLOAD_LOG_URL"] == "http://sink.logs.svc:8080/events"
    assert e["MODELPILOT_PAYLOAD_LOG_SAMPLE_RATE"] == "0.1"
    assert (e["MODELPILOT_NAMESPACE"], e["MODELPILOT_TRACK"]) == ("risk", "canary")
    e = env(build({**BASE, "logging": {"sink": {"url": "https://sink"}}}))
    assert (e["MODELPILOT_PAYLOAD_LOG_URL"], e["MODELPILOT_PAYLOAD_LOG_SAMPLE_RATE"]) == ("https://sink", "1")


@pytest.mark.parametrize("logging, message", [
    ({"sink": {}}, "spec.logging.sink.url must be set"),
    ({"sink": "http://x"}, "spec.logging.sink must be an object"),
    ({"sink": {"url": "http://user:pw@sink/"}}, "must not carry credentials"),
    ({"sink": {"url": "ftp://sink/"}}, "must start with http:// or https://"),
    ({"sink": {"url": "http://sink/?token=1"}}, "must not have a query string"),
    ({"sink": {"url": "http://sink"}, "sampleRate": 1.5}, "spec.logging.sampleRate must be a number from 0 to 1"),
    ({"sink": {"url": "http://sink"}, "sampleRate": "all"}, "spec.logging.sampleRate must be a number from 0 to 1"),
    ({"sink": {"url": "http://sink"}, "sampleRate": True}, "spec.logging.sampleRate must be a number from 0 to 1"),
    ("yes", "spec.logging must be an object"),
])
def test_a_bad_payload_log_is_invalid_spec_naming_the_field(logging: Any, message: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        parse_spec({**BASE, "logging": logging}, SETTINGS)


def test_runtime_env_cannot_point_the_pods_at_a_drift_profile_of_the_tenants_choosing() -> None:
    """A profile URI of the tenant's choosing would be fetched with the registry credentials the pod holds."""
    dep = build({**BASE, "registry": {"credentialsSecretRef": {"name": "mlflow-auth"}}, "runtime": {"env": [
        {"name": "MODELPILOT_DRIFT_PROFILE", "value": "https://collector.example/steal"},
        {"name": "MODELPILOT_DRIFT_WINDOW", "value": "1"}]}})
    assert not [k for k in env(dep) if k.startswith("MODELPILOT_DRIFT_")]
