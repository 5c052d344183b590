"""spec.podTemplate, spec.runtime.{image, envFrom, volumeMounts}, platform defaults and disruption budgets."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modelpilot import names, render
from modelpilot.canary import Plan as CanaryPlan
from modelpilot.config import Settings
from modelpilot.desired import desired_children
from modelpilot.observe import World, budget_key
from modelpilot.plan import Decision
from modelpilot.podtemplate import image_allowed
from modelpilot.spec import InvalidSpec, parse_spec
from tests.unit.test_render import OWNER, RESOLVED, SETTINGS, container

BASE = {"model": {"uri": "models:/fraud-detector@champion"}}
ALLOWING = Settings(default_tracking_uri=SETTINGS.default_tracking_uri,
                    allowed_images=("registry.example.com/ml/", "ghcr.io/acme/scorer", "docker.io/lib/x:1.0"))

FULL_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "risk", "cost-center": "42"},
                 "annotations": {"example.com/owner": "risk@example.com"}},
    "spec": {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["inference"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "DoNotSchedule",
                                       "labelSelector": {"matchLabels": {"modelpilot.dev/deployment": "fraud"}}}],
        "imagePullSecrets": [{"name": "team-pull"}],
        "serviceAccountName": "fraud-s3-reader",
        "priorityClassName": "inference-high",
        "runtimeClassName": "gvisor",
        "volumes": [{"name": "features", "configMap": {"name": "feature-list"}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
    },
}


def build(spec: dict[str, Any], settings: Settings = SETTINGS, replicas: int | None = None) -> dict[str, Any]:
    return render.render_deployment(OWNER, parse_spec(spec, settings), RESOLVED, settings, replicas=replicas)


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]


def test_every_pod_template_field_renders_what_it_says() -> None:
    runtime = {"envFrom": [{"configMapRef": {"name": "tuning"}}, {"secretRef": {"name": "feature-store"},
                                                                    "prefix": "FS_"}],
               "volumeMounts": [{"name": "features", "mountPath": "/etc/features", "readOnly": True}]}
    dep = build({**BASE, "replicas": 3, "podTemplate": FULL_TEMPLATE, "runtime": runtime})
    spec = pod(dep)
    template = FULL_TEMPLATE["spec"]
    for key in ("affinity", "topologySpreadConstraints", "imagePullSecrets", "serviceAccountName",
                "priorityClassName", "runtimeClassName"):
        assert spec[key] == template[key], key
    assert [v["name"] for v in spec["volumes"]] == ["model-cache", "features", "scratch"]
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                       "runAsUser": 1000, "fsGroup": 2000}
    assert spec["automountServiceAccountToken"] is False  # a cloud identity's webhook projects its own token
    c = container(dep)
    assert c["envFrom"] == runtime["envFrom"]
    assert c["volumeMounts"] == [{"name": "model-cache", "mountPath": "/tmp"}, *runtime["volumeMounts"]]
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "risk" and meta["annotations"]["example.com/owner"] == "risk@example.com"


def test_the_operators_fields_win_over_the_template() -> None:
    plain = build(BASE)
    dressed = build({**BASE, "podTemplate": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}},
                     "runtime": {"env": [{"name": "MODELPILOT_MODEL_URI", "value": "models:/other/1"}],
                                 "envFrom": [{"secretRef": {"name": "x"}}]}})
    for key in ("name", "args", "ports", "readinessProbe", "livenessProbe", "startupProbe", "securityContext",
                "env"):
        assert container(dressed)[key] == container(plain)[key], key
    assert dressed["spec"]["selector"] == plain["spec"]["selector"]
    assert dressed["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelpilot"


def test_an_unchanged_template_renders_byte_identically_and_leaves_the_spec_alone() -> None:
    spec = {**BASE, "podTemplate": copy.deepcopy(FULL_TEMPLATE)}
    before = copy.deepcopy(spec)
    assert json.dumps(build(spec), sort_keys=True) == json.dumps(build(spec), sort_keys=True)
    assert spec == before


def test_own_spread_replaces_the_default_and_the_default_stays_without_one() -> None:
    default = pod(build({**BASE, "replicas": 2}))["topologySpreadConstraints"]
    assert default[0]["topologyKey"] == "kubernetes.io/hostname"
    own = pod(build({**BASE, "replicas": 2, "podTemplate": {"spec": {"topologySpreadConstraints": []}}}))
    assert own["topologySpreadConstraints"] == []


@pytest.mark.parametrize(("template", "says"), [
    ({"spec": {"hostNetwork": True}}, "spec.podTemplate.spec.hostNetwork is not a field"),
    ({"spec": {"containers": [{"name": "x"}]}}, "spec.podTemplate.spec.containers is not a field"),
    ({"spec": {"nodeName": "n1"}}, "spec.podTemplate.spec.nodeName is not a field"),
    ({"metadata": {"name": "x"}}, "spec.podTemplate.metadata.name is not a field"),
    ({"metadata": {"labels": {"modelpilot.dev/deployment": "other"}}}, "belongs to the operator"),
    ({"metadata": {"annotations": {"canary.modelpilot.dev/x": "1"}}}, "belongs to the operator"),
    ({"metadata": {"labels": {"bad key!": "x"}}}, "not a valid key"),
    ({"metadata": {"labels": {"team": "not a value"}}}, "not a valid label value"),
    ({"metadata": {"labels": {"team": 7}}}, "must be a string"),
    ({"spec": {"securityContext": {"runAsNonRoot": False}}}, "runAsNonRoot: false"),
    ({"spec": {"securityContext": {"runAsUser": 0}}}, "runAsUser: 0"),
    ({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}, "RuntimeDefault or Localhost"),
    ({"spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}}, "RuntimeDefault or Localhost"),
    ({"spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}}, "kernel.msgmax"),
    ({"spec": {"securityContext": {"seLinuxOptions": {"user": "root"}}}}, "seLinuxOptions"),
    ({"spec": {"securityContext": {"windowsOptions": {"hostProcess": True}}}}, "hostProcess"),
    ({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}, "hostPath volumes break the restricted"),
    ({"spec": {"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}}, "nfs volumes break"),
    ({"spec": {"volumes": [{"name": "model-cache", "emptyDir": {}}]}}, "taken by the operator"),
    ({"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}}, "a duplicate"),
    ({"spec": {"volumes": [{"name": "a", "emptyDir": {}, "secret": {"secretName": "s"}}]}}, "exactly one source"),
    ({"spec": {"volumes": [{"name": "a"}]}}, "exactly one source"),
    ({"spec": {"serviceAccountName": "Not/A/Name"}}, "must be a name"),
    ({"spec": {"imagePullSecrets": [{"name": "s", "namespace": "other"}]}}, "must be {name: SECRET}"),
    ({"spec": {"affinity": "anywhere"}}, "affinity must be an object"),
    ("everything", "spec.podTemplate must be an object"),
])
def test_templates_that_break_the_platform_are_invalid_naming_the_field(template: Any, says: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.podTemplate") as caught:
        parse_spec({**BASE, "podTemplate": template}, SETTINGS)
    assert says in str(caught.value)


@pytest.mark.parametrize(("runtime", "says"), [
    ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "is not a volume of spec.podTemplate.spec.volumes"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/tmp"}]}, "is the operator's"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/tmp/"}]}, "is the operator's"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/var/run/modelpilot"}]}, "is the operator's"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/"}]}, "is the operator's"),
    ({"volumeMounts": [{"name": "v", "mountPath": "/a/../tmp"}]}, "is the operator's"),
    ({"volumeMounts": [{"name": "v", "mountPath": "relative"}]}, "absolute path"),
    ({"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}, "exactly one of"),
    ({"envFrom": [{"prefix": "X_"}]}, "exactly one of"),
    ({"envFrom": [{"secretRef": {"name": "a"}, "namespace": "kube-system"}]}, "namespace is not a field"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy must be one of"),
    ({"image": "registry.example.com/ml/scorer:1"}, "none are"),
])
def test_bad_runtime_container_fields_name_the_field(runtime: dict[str, Any], says: str) -> None:
    spec = {**BASE, "podTemplate": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}, "runtime": runtime}
    with pytest.raises(InvalidSpec, match=r"spec\.runtime") as caught:
        parse_spec(spec, SETTINGS)
    assert says in str(caught.value)


def test_a_service_account_cannot_replace_the_token_reviewer_of_kubernetes_auth() -> None:
    with pytest.raises(InvalidSpec, match=r"serviceAccountName cannot be set with spec\.auth\.mode kubernetes"):
        parse_spec({**BASE, "auth": {"mode": "kubernetes"},
                    "podTemplate": {"spec": {"serviceAccountName": "mine"}}}, SETTINGS)


@pytest.mark.parametrize(("image", "allowed"), [
    ("registry.example.com/ml/scorer:1.2", True),
    ("registry.example.com/ml/team/deep/scorer@sha256:" + "a" * 64, True),
    ("ghcr.io/acme/scorer", True),
    ("ghcr.io/acme/scorer:2", True),
    ("ghcr.io/acme/scorer@sha256:" + "b" * 64, True),
    ("docker.io/lib/x:1.0", True),
    ("docker.io/lib/x:1.1", False),
    ("docker.io/lib/x", False),
    ("ghcr.io/acme/scorer-evil:1", False),
    ("ghcr.io/acme/scorer/evil:1", False),
    ("registry.example.com/mlx/scorer:1", False),
    ("registry.example.com.evil.io/ml/scorer:1", False),
    ("registry.example.com/other/scorer:1", False),
])
def test_the_image_allowlist(image: str, allowed: bool) -> None:
    assert image_allowed(image, ALLOWING.allowed_images) is allowed
    spec = {**BASE, "runtime": {"image": image, "imagePullPolicy": "Always"}}
    if allowed:
        c = container(build(spec, ALLOWING))
        assert (c["image"], c["imagePullPolicy"]) == (image, "Always")
    else:
        with pytest.raises(InvalidSpec, match=r"spec.runtime.image .* is not among the images this platform allows"):
            parse_spec(spec, ALLOWING)


@pytest.mark.parametrize("image", ["Registry.example.com/ml/x", "registry.example.com/ml/x y", "-x", "a//b",
                                   "registry.example.com/ml/x:tag\n", "registry.example.com/ml/../x"])
def test_an_image_that_is_not_a_reference_is_invalid(image: str) -> None:
    with pytest.raises(InvalidSpec, match="must be an image reference"):
        parse_spec({**BASE, "runtime": {"image": image}}, ALLOWING)


def test_platform_defaults_for_pull_secrets_and_placement_apply_where_the_spec_sets_none() -> None:
    platform = Settings(default_tracking_uri=SETTINGS.default_tracking_uri, server_image_pull_secrets=("regcred",),
                        server_node_selector=(("pool", "inference"),),
                        server_tolerations=({"key": "inference", "operator": "Exists", "effect": "NoSchedule"},))
    plain = pod(build(BASE, platform))
    assert plain["imagePullSecrets"] == [{"name": "regcred"}]
    assert plain["nodeSelector"] == {"pool": "inference"}
    assert plain["tolerations"] == [{"key": "inference", "operator": "Exists", "effect": "NoSchedule"}]
    own = pod(build({**BASE, "nodeSelector": {"pool": "batch"}, "tolerations": [{"key": "batch", "operator": "Exists"}],
                     "podTemplate": {"spec": {"imagePullSecrets": [{"name": "mine"}]}}}, platform))
    assert own["imagePullSecrets"] == [{"name": "mine"}]
    assert own["nodeSelector"] == {"pool": "batch"}
    assert own["tolerations"] == [{"key": "batch", "operator": "Exists"}]


def test_settings_read_the_platform_defaults_from_the_environment() -> None:
    settings = Settings.from_env({"MODELPILOT_ALLOWED_IMAGES": "a.io/x/, b.io/y",
                                  "MODELPILOT_SERVER_IMAGE_PULL_SECRETS": "regcred",
                                  "MODELPILOT_SERVER_NODE_SELECTOR": "pool=inference,zone=a",
                                  "MODELPILOT_SERVER_TOLERATIONS": '[{"key": "k", "operator": "Exists"}]'})
    assert settings.allowed_images == ("a.io/x/", "b.io/y")
    assert settings.server_image_pull_secrets == ("regcred",)
    assert settings.server_node_selector == (("pool", "inference"), ("zone", "a"))
    assert settings.server_tolerations == ({"key": "k", "operator": "Exists"},)
    with pytest.raises(ValueError, match="MODELPILOT_SERVER_TOLERATIONS must be a JSON list"):
        Settings.from_env({"MODELPILOT_SERVER_TOLERATIONS": "key=k"})


def _budget(spec: dict[str, Any]) -> dict[str, Any] | None:
    parsed = parse_spec(spec, SETTINGS)
    decision = Decision(CanaryPlan(stable=RESOLVED), "replicas", None, parsed.replicas, 0, BASE["model"]["uri"], "")
    desired = desired_children(OWNER, parsed, decision, SETTINGS, World(OWNER, {}, gateway_api=False))
    if budget_key(OWNER) in desired.unwanted:
        return None
    return desired.objects[budget_key(OWNER)]


def test_a_disruption_budget_by_default_from_two_replicas_and_as_the_spec_says() -> None:
    assert _budget(BASE) is None
    assert _budget({**BASE, "replicas": 1}) is None
    default = _budget({**BASE, "replicas": 2})
    assert default is not None
    assert default["spec"]["maxUnavailable"] == 1 and "minAvailable" not in default["spec"]
    assert default["spec"]["selector"] == {"matchLabels": {names.LABEL_DEPLOYMENT: OWNER.name}}  # every track
    assert default["metadata"]["ownerReferences"] == [OWNER.reference()]
    own = _budget({**BASE, "replicas": 1, "disruptionBudget": {"minAvailable": "50%"}})
    assert own is not None and own["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in own["spec"]


@pytest.mark.parametrize(("budget", "says"), [
    ({"minAvailable": 1, "maxUnavailable": 1}, "not both"),
    ({"maxUnavailable": -1}, "a number of pods or a percentage"),
    ({"minAvailable": "half"}, "a number of pods or a percentage"),
])
def test_bad_disruption_budgets_name_the_field(budget: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.disruptionBudget") as caught:
        parse_spec({**BASE, "disruptionBudget": budget}, SETTINGS)
    assert says in str(caught.value)
