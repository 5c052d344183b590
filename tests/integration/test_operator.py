"""The operator against a real kube-apiserver (+ controller-manager, scheduler, kwok) and a real MLflow.

Assertions are on what the API server holds: Deployments, Services, owner references, pods, status,
events and resourceVersions.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from hack.controlplane import ControlPlane
from hack.services import MlflowServer
from modelpilot.kube import Kube
from tests.helpers import (
    MDEP,
    Operator,
    Registry,
    apply,
    condition,
    events_for,
    mdep_manifest,
    wait_event,
    wait_for,
    wait_ready,
    wait_reason,
)

pytestmark = pytest.mark.cluster

VERSION_LABEL = "modelpilot.dev/model-version"


def deployment(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get("apps/v1", "Deployment", ns, name)


def served_version(kube: Kube, ns: str, name: str) -> str | None:
    dep = deployment(kube, ns, name)
    return dep["spec"]["template"]["metadata"]["labels"][VERSION_LABEL] if dep else None


def pods(kube: Kube, ns: str, selector: str) -> list[dict[str, Any]]:
    body = kube.request("GET", f"/api/v1/namespaces/{ns}/pods", params={"labelSelector": selector})
    return list((body or {}).get("items", []))


def settled_versions(kube: Kube, ns: str, kinds: tuple[tuple[str, str], ...], name: str = "m") -> dict[str, str]:
    """resourceVersions once controllers stopped writing (the same over 2 s): the baseline for 'untouched'."""

    def read() -> dict[str, str]:
        return {kind: kube.get(api, kind, ns, name)["metadata"]["resourceVersion"]  # type: ignore[index]
                for api, kind in kinds}

    def stable() -> dict[str, str] | None:
        first = read()
        time.sleep(2)
        return first if read() == first else None

    return dict(wait_for(stable, 30, "the children to settle"))


CHILDREN = (("apps/v1", "Deployment"), ("v1", "Service"))


def ready_pods(kube: Kube, ns: str, selector: str) -> list[dict[str, Any]]:
    return [p for p in pods(kube, ns, selector) if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]


def test_apply_creates_a_pinned_deployment_and_service(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    version = registry.register(model_name, alias="champion")
    result = apply(control_plane, mdep_manifest("fraud", namespace, f"models:/{model_name}@champion", replicas=2))
    assert result.returncode == 0, result.stderr

    obj = wait_ready(kube, namespace, "fraud", operator=operator)
    uid = obj["metadata"]["uid"]
    dep = deployment(kube, namespace, "fraud")
    assert dep is not None
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"]["modelpilot.dev/model-name"] == model_name
    assert template["metadata"]["labels"][VERSION_LABEL] == version
    assert template["spec"]["containers"][0]["args"] == ["--model-uri", f"models:/{model_name}/{version}"]
    assert dep["metadata"]["ownerReferences"] == [{
        "apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud", "uid": uid,
        "controller": True, "blockOwnerDeletion": True}]
    svc = kube.get("v1", "Service", namespace, "fraud")
    assert svc is not None and svc["metadata"]["ownerReferences"][0]["uid"] == uid
    assert svc["spec"]["ports"][0]["port"] == 80

    # pods really exist, scheduled and Ready (simulated by kwok), and are selected by the Service
    selector = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
    assert len(ready_pods(kube, namespace, selector)) == 2

    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["model"]["version"] == version and status["model"]["alias"] == "champion"
    assert len(status["model"]["runId"]) == 32
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["url"] == f"http://fraud.{namespace}.svc.cluster.local"
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "ModelResolved", "Progressing", "Degraded"}
    assert [e["reason"] for e in wait_event(kube, namespace, "fraud", "Resolved")].count("Resolved") == 1

    # the operator writes only status: no finalizers, no annotations, no spec changes
    meta = obj["metadata"]
    assert not meta.get("finalizers")
    assert not [a for a in meta.get("annotations", {}) if "kopf" in a or "modelpilot" in a]
    managers = {m["manager"]: m.get("subresource", "") for m in meta["managedFields"]}
    assert managers.get("modelpilot") == "status", managers

    printed = control_plane.kubectl("get", "mdep", "fraud", "-n", namespace).stdout
    assert model_name in printed and "Serving" in printed, printed


def test_children_carry_nothing_gitops_tracks(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    """Argo CD tracks by app.kubernetes.io/instance or argocd.argoproj.io/* : children must not inherit them."""
    registry.register(model_name, alias="champion")
    manifest = mdep_manifest("m", namespace, f"models:/{model_name}@champion")
    manifest["metadata"]["labels"] = {"app.kubernetes.io/instance": "risk-models", "team": "risk"}
    manifest["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "risk-models:modelpilot.dev/..."}
    apply(control_plane, manifest)
    obj = wait_ready(kube, namespace, "m", operator=operator)
    for api, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
        child = kube.get(api, kind, namespace, "m")
        assert child is not None
        meta = child["metadata"]
        keys = set(meta.get("labels", {})) | set(meta.get("annotations", {}))
        if kind == "Deployment":
            tmpl = child["spec"]["template"]["metadata"]
            keys |= set(tmpl.get("labels", {})) | set(tmpl.get("annotations", {}))
        assert "app.kubernetes.io/instance" not in keys and not [k for k in keys if "argoproj" in k], keys
        assert "team" not in keys
    # the spec the user (or Argo CD) wrote is exactly what is stored: nothing defaulted into it
    assert obj["spec"] == manifest["spec"]


def test_moving_the_alias_rolls_out_the_new_version(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion", seed=0)
    refresh = 3
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion",
                                       refreshInterval=f"{refresh}s", monitoring={"maxModelAge": "30d"}))
    wait_ready(kube, namespace, "m", operator=operator)
    assert served_version(kube, namespace, "m") == "1"
    # staleness from the real registry's creation_timestamp: registered moments ago, well within 30 days
    def serving() -> dict[str, Any] | None:
        obj = kube.get(*MDEP, namespace, "m") or {}
        return obj if obj.get("status", {}).get("model", {}).get("servingSince") else None

    obj = wait_for(serving, 30, "status.model.servingSince")
    registered = datetime.fromisoformat(obj["status"]["model"]["registeredAt"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - registered).total_seconds()) < 600, obj["status"]["model"]
    assert condition(obj, "Stale")["reason"] == "WithinMaxAge", obj["status"]["conditions"]

    new = registry.register(model_name, alias="champion", seed=1)
    moved_at = time.monotonic()
    wait_for(lambda: served_version(kube, namespace, "m") == new, refresh + 10,
             "the Deployment to follow the alias")
    assert time.monotonic() - moved_at <= refresh + 10

    obj = wait_ready(kube, namespace, "m", operator=operator, version=new)
    assert obj["status"]["lastVersionChange"]["from"] == "1" and obj["status"]["lastVersionChange"]["to"] == new
    changed = [e for e in wait_event(kube, namespace, "m", "VersionChanged") if e["reason"] == "VersionChanged"]
    assert len(changed) == 1 and f"from version 1 to {new}" in changed[0]["message"]
    selector = f"modelpilot.dev/deployment=m,{VERSION_LABEL}={new}"
    wait_for(lambda: len(ready_pods(kube, namespace, selector)) == 1, 60, "a Ready pod of the new version")


def test_a_newer_version_nobody_promoted_is_reported_stale_from_the_real_registry(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    # a short maxModelAge stands in for months: MLflow stamps registrations itself, they cannot be backdated
    registry.register(model_name, alias="champion", seed=0)
    newer = registry.register(model_name, seed=1)  # registered, never given the alias
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="2s",
                                       monitoring={"maxModelAge": "15s"}))
    wait_ready(kube, namespace, "m", operator=operator)
    obj = wait_reason(kube, namespace, "m", "Stale", "NewerVersionNotServed", timeout=60)
    stale = condition(obj, "Stale")
    assert stale["status"] == "True" and f"version {newer} (registered at" in stale["message"], stale
    assert obj["status"]["model"]["version"] == "1", "reported, not acted on: the alias decides what serves"
    wait_event(kube, namespace, "m", "NewerVersionNotServed", "Warning")


def test_registry_outage_leaves_children_untouched_and_recovers(
        control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str, model_name: str,
        own_mlflow: MlflowServer) -> None:
    Registry(own_mlflow.url).register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="2s",
                                       registry={"trackingUri": own_mlflow.url}))
    wait_ready(kube, namespace, "m", operator=operator)
    before = settled_versions(kube, namespace, CHILDREN)

    own_mlflow.stop()
    obj = wait_reason(kube, namespace, "m", "ModelResolved", "RegistryUnreachable")
    resolved = condition(obj, "ModelResolved")
    assert resolved["status"] == "False" and own_mlflow.url in resolved["message"]
    assert "still serving the last resolved version 1" in resolved["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Degraded")["status"] == "True"
    assert obj["status"]["model"]["version"] == "1"
    wait_event(kube, namespace, "m", "RegistryUnreachable", "Warning")
    # several retries with the registry down (proven by the operator's own log), then: one warning
    # only, and the children untouched
    offset = operator.log_size()
    retried = f"for {namespace}/m failed (RegistryUnreachable)"  # one line per failed resolution
    wait_for(lambda: operator.logs_since(offset).count(retried) >= 3, 60, f"three retries\n{operator.logs()}")
    warnings = [e for e in events_for(kube, namespace, "m") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["RegistryUnreachable"], "one warning, not one per retry"
    after = {kind: kube.get(api, kind, namespace, "m")["metadata"]["resourceVersion"]  # type: ignore[index]
             for api, kind in CHILDREN}
    assert after == before, "children must not be touched while the registry is down"

    own_mlflow.start()  # same port, same database; the operator is not touched
    obj = wait_ready(kube, namespace, "m", timeout=60, operator=operator)
    assert condition(obj, "ModelResolved")["status"] == "True"
    wait_event(kube, namespace, "m", "Recovered")


@pytest.mark.parametrize(
    ("uri_suffix", "extra", "reason"),
    [
        pytest.param("@no-such-alias", {}, "ModelNotFound", id="unknown-alias"),
        pytest.param("/42", {}, "ModelNotFound", id="unknown-version"),
        pytest.param("@champion", {"registry": {"credentialsSecretRef": {"name": "missing"}}},
                     "CredentialsSecretInvalid", id="missing-secret"),
    ],
)
def test_unresolvable_creates_nothing(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str, uri_suffix: str, extra: dict[str, Any], reason: str) -> None:
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}{uri_suffix}", **extra))
    obj = wait_reason(kube, namespace, "m", "ModelResolved", reason)
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "ModelResolved")["message"]
    wait_event(kube, namespace, "m", reason, "Warning")
    assert deployment(kube, namespace, "m") is None
    assert kube.get("v1", "Service", namespace, "m") is None


def test_switching_to_an_unknown_alias_keeps_serving_the_old_version(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion"))
    wait_ready(kube, namespace, "m", operator=operator)
    rv = deployment(kube, namespace, "m")["metadata"]["resourceVersion"]  # type: ignore[index]
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@typo"))
    obj = wait_reason(kube, namespace, "m", "ModelResolved", "ModelNotFound")
    assert "still serving the last resolved version 1" in condition(obj, "ModelResolved")["message"]
    assert deployment(kube, namespace, "m")["metadata"]["resourceVersion"] == rv  # type: ignore[index]


def test_unknown_model_name(control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str) -> None:
    apply(control_plane, mdep_manifest("m", namespace, "models:/never-registered@champion"))
    obj = wait_reason(kube, namespace, "m", "ModelResolved", "ModelNotFound")
    assert "never-registered" in condition(obj, "ModelResolved")["message"]
    assert deployment(kube, namespace, "m") is None


def test_spec_changes_are_applied_and_delete_cascades(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", replicas=1))
    wait_ready(kube, namespace, "m", operator=operator)
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", replicas=3))
    wait_for(lambda: deployment(kube, namespace, "m")["spec"]["replicas"] == 3, 20,  # type: ignore[index]
             "replicas to follow the spec")
    obj = wait_ready(kube, namespace, "m", operator=operator)
    assert obj["status"]["readyReplicas"] == 3 and obj["status"]["observedGeneration"] == 2

    control_plane.kubectl("delete", "mdep", "m", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(lambda: deployment(kube, namespace, "m") is None and kube.get("v1", "Service", namespace, "m") is None,
             60, "the garbage collector to remove the children")
    wait_for(lambda: not pods(kube, namespace, "modelpilot.dev/deployment=m"), 60, "the pods to go away")


def test_operator_restart_does_not_write_converged_children(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="2s"))
    wait_ready(kube, namespace, "m", operator=operator)
    everything = (*CHILDREN, MDEP)
    before = settled_versions(kube, namespace, everything)
    offset = operator.log_size()
    operator.restart()
    # the restarted operator reconciled on resume (its own log says so) and asked the registry again
    # at least twice (its refresher, every refreshInterval)
    operator.wait_reconciles(namespace, "m", 1, offset)
    wait_for(lambda: operator.metric_sum("modelpilot_registry_requests_total") >= 3, 30, "two refreshes")
    after = {kind: kube.get(api, kind, namespace, "m")["metadata"]["resourceVersion"]  # type: ignore[index]
             for api, kind in everything}
    assert after == before, "a restart must not write to converged objects"
    writes = {verb: operator.metric("modelpilot_api_requests_total", verb=verb) for verb in ("PATCH", "POST", "DELETE")}
    assert writes == {"PATCH": 0, "POST": 0, "DELETE": 0}, f"not even a no-op apply: {writes}"
    assert operator.metric("modelpilot_api_requests_total", verb="GET") > 0, "while it did read"
    other = [line for line in operator.logs_since(offset).splitlines()
             if f"{namespace}/m" in line and f"Reconciled {namespace}/m " not in line]
    assert other == [], "no event, no warning, no failed reconcile"


def test_operator_status_reports_invalid_spec_past_the_schema(
        control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str) -> None:
    """Specs the schema lets through but that cannot work still get a readable condition."""
    apply(control_plane, mdep_manifest("m", namespace, "models:/fraud@v2"))  # reserved alias spelling
    obj = wait_reason(kube, namespace, "m", "Ready", "InvalidSpec")
    assert "spec.model.uri" in condition(obj, "Ready")["message"]
    assert deployment(kube, namespace, "m") is None


def test_kubernetes_auth_where_the_platform_has_not_enabled_it_says_so(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    """No token-reviewing ServiceAccount in the namespace: the pods cannot be created, and status says why."""
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", auth={"mode": "kubernetes"}))
    obj = wait_reason(kube, namespace, "m", "Progressing", "RolloutFailed", timeout=90)
    assert 'serviceaccount "modelpilot-serving" not found' in condition(obj, "Progressing")["message"]
    assert condition(obj, "Ready")["status"] == "False"


def test_autoscaling_hands_the_replica_count_to_the_hpa_and_takes_it_back_when_removed(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    """The real HPA controller (no metrics API here: it only holds its bounds) and real server-side apply
    field ownership: the count is never reset when the operator stops applying it, an HPA-style scale
    through the scale subresource stays, and spec.replicas comes back with autoscaling off."""
    registry.register(model_name, alias="champion")
    manifest = mdep_manifest("m", namespace, f"models:/{model_name}@champion", replicas=1,
                             autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 80})
    apply(control_plane, manifest)
    hpa = ("autoscaling/v2", "HorizontalPodAutoscaler", namespace, "m")
    created = wait_for(lambda: kube.get(*hpa), 60, f"the HorizontalPodAutoscaler\n{operator.logs()}")
    assert created["spec"]["scaleTargetRef"]["name"] == "m" and created["metadata"]["ownerReferences"][0]["uid"]
    seen: list[int] = []

    def replicas() -> int:
        count = int(deployment(kube, namespace, "m")["spec"]["replicas"])  # type: ignore[index]
        seen.append(count)
        return count

    # the operator's next reconcile no longer applies replicas: the handed-over count stays at minReplicas
    wait_for(lambda: replicas() and "replicas" not in _applied_by(deployment(kube, namespace, "m"), "modelpilot"),
             60, "the operator to stop applying replicas")
    assert set(seen) == {2}, seen  # created at minReplicas (not spec.replicas), never reset to 1
    control_plane.kubectl("scale", "deployment/m", "--replicas=4", "-n", namespace)
    control_plane.kubectl("annotate", "mdep", "m", "-n", namespace, "touch=1", "--overwrite")  # a reconcile
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        replicas()
        time.sleep(0.5)
    assert seen[-1] == 4 and min(seen) >= 2, seen
    status = wait_for(lambda: (kube.get(*MDEP, namespace, "m") or {}).get("status", {}).get("autoscaling"), 60,
                      "status.autoscaling")
    assert set(status) >= {"currentReplicas", "desiredReplicas"}, status

    del manifest["spec"]["autoscaling"]
    apply(control_plane, manifest)
    wait_for(lambda: kube.get(*hpa) is None and replicas() == 1, 60, "the HPA removed and spec.replicas applied")
    wait_for(lambda: (kube.get(*MDEP, namespace, "m") or {}).get("status", {}).get("autoscaling") is None, 30,
             "status.autoscaling cleared")


def _applied_by(obj: dict[str, Any] | None, manager: str) -> set[str]:
    """Top-level spec fields `manager` owns through server-side apply."""
    for entry in (obj or {}).get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            return {k[2:] for k in (entry.get("fieldsV1") or {}).get("f:spec", {})}
    return set()
