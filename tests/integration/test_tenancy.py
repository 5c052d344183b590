"""A cluster shared by many teams: the operator against hostile or careless neighbours, on the real API server.

Every field of a ModelDeployment is tenant input. These tests hold the rules that make that safe:
never touch an object that is not ours; a credential goes only where it was configured to go; a
tenant's URL cannot steer requests or read other services' answers; a tenant's slow registry does not
slow anyone else; a spec the API server refuses says so in status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.controlplane import ControlPlane
from hack.services import MlflowServer
from modelpilot.kube import Kube
from tests.fakes.mlflow import FakeMlflow
from tests.helpers import (
    Operator,
    Registry,
    apply,
    condition,
    events_for,
    get_mdep,
    mdep_manifest,
    reapply,
    wait_event,
    wait_for,
    wait_ready,
    wait_reason,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def fake_registry() -> Iterator[FakeMlflow]:
    server = FakeMlflow()
    yield server
    server.close()


# -- never touch what is not ours -------------------------------------------------------------------------
def test_objects_of_others_under_our_names_are_never_touched(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    """A Deployment `web-canary` and a Service `web` that belong to someone else survive a ModelDeployment `web`."""
    theirs = {"app": "their-web"}
    control_plane.kubectl("create", "deployment", "web-canary", "--image=registry.invalid/web:1", "-n", namespace)
    control_plane.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", namespace)
    control_plane.kubectl("set", "selector", "service", "web", "app=their-web", "-n", namespace)
    before = {kind: kube.get(api, kind, namespace, name)
              for api, kind, name in (("apps/v1", "Deployment", "web-canary"), ("v1", "Service", "web"))}

    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("web", namespace, f"models:/{model_name}@champion"))
    obj = wait_reason(kube, namespace, "web", "Ready", "NameConflict")
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and "Service web" in ready["message"], ready
    wait_event(kube, namespace, "web", "NameConflict", "Warning")

    # several retries later: one event, and nothing of theirs changed, nothing of ours created
    generation_seen = obj["status"]["observedGeneration"]
    time.sleep(12)  # the conflict is looked at again every 10 s
    conflict_events = [e for e in events_for(kube, namespace, "web") if e["reason"] == "NameConflict"]
    assert len(conflict_events) == 1 and conflict_events[0].get("count", 1) == 1, conflict_events
    service = kube.get("v1", "Service", namespace, "web")
    assert service is not None and service["spec"]["selector"] == theirs
    assert not service["metadata"].get("ownerReferences")
    assert service["metadata"]["resourceVersion"] == before["Service"]["metadata"]["resourceVersion"]  # type: ignore[index]
    canary = kube.get("apps/v1", "Deployment", namespace, "web-canary")
    assert canary is not None and canary["metadata"]["uid"] == before["Deployment"]["metadata"]["uid"]  # type: ignore[index]
    assert kube.get("apps/v1", "Deployment", namespace, "web") is None
    assert get_mdep(kube, namespace, "web")["status"]["observedGeneration"] == generation_seen

    # the clash is removed: it recovers by itself; their canary-named Deployment is still untouched
    control_plane.kubectl("delete", "service", "web", "-n", namespace)
    obj = wait_ready(kube, namespace, "web", timeout=60, operator=operator)
    service = kube.get("v1", "Service", namespace, "web")
    assert service is not None and service["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    canary = kube.get("apps/v1", "Deployment", namespace, "web-canary")
    assert canary is not None and not canary["metadata"].get("ownerReferences")


# -- credentials, URLs, answers -----------------------------------------------------------------------------
@pytest.fixture
def guarded_operator(control_plane: ControlPlane, mlflow_server: MlflowServer, operator: Operator,
                     tmp_path: Path) -> Iterator[Operator]:
    """An operator whose platform team set a default credentials Secret (with the default registry)."""
    own = Operator(tmp_path, control_plane.kubeconfig_path, mlflow_server.url)
    own.env["MODELPILOT_DEFAULT_CREDENTIALS_SECRET"] = "platform-auth"
    with own.in_place_of(operator):
        yield own


def test_the_platform_token_goes_only_to_the_platform_registry(
        control_plane: ControlPlane, kube: Kube, guarded_operator: Operator, registry: Registry, namespace: str,
        model_name: str, fake_registry: FakeMlflow) -> None:
    control_plane.kubectl("create", "secret", "generic", "platform-auth", "--from-literal=token=PLATFORM-TOKEN",
                          "-n", namespace)
    control_plane.kubectl("create", "secret", "generic", "mine", "--from-literal=token=TENANT-TOKEN", "-n", namespace)
    fake_registry.set_alias(model_name, "champion", "3")
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("tenant", namespace, f"models:/{model_name}@champion",
                                       registry={"trackingUri": fake_registry.url}))
    apply(control_plane, mdep_manifest("tenant-secret", namespace, f"models:/{model_name}@champion",
                                       registry={"trackingUri": fake_registry.url,
                                                 "credentialsSecretRef": {"name": "mine"}}))
    apply(control_plane, mdep_manifest("platform", namespace, f"models:/{model_name}@champion"))
    for name, version in (("tenant", "3"), ("tenant-secret", "3"), ("platform", "1")):
        wait_ready(kube, namespace, name, operator=guarded_operator, version=version)

    assert fake_registry.requests, "the tenant's registry was asked"
    assert {auth for _, auth in fake_registry.requests} == {None, "Bearer TENANT-TOKEN"}

    def secrets_in_pods(name: str) -> set[str]:
        dep = kube.get("apps/v1", "Deployment", namespace, name)
        assert dep is not None
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        tracking = next(e["value"] for e in env if e["name"] == "MLFLOW_TRACKING_URI")
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
        return {f"{tracking} {ref}" for ref in refs}

    assert secrets_in_pods("tenant") == set(), "the pods of a tenant-chosen registry get no platform Secret"
    assert secrets_in_pods("tenant-secret") == {f"{fake_registry.url} mine"}
    platform = secrets_in_pods("platform")
    assert len(platform) == 1 and platform.pop().endswith(" platform-auth")


def test_a_url_cannot_steer_the_request_and_an_answer_is_never_echoed(
        control_plane: ControlPlane, kube: Kube, operator: Operator, namespace: str,
        fake_registry: FakeMlflow) -> None:
    fake_registry.mode = "html"  # an internal service's error page, with something secret in it
    apply(control_plane, mdep_manifest("m", namespace, "models:/x@champion",
                                       registry={"trackingUri": fake_registry.url + "/internal/admin"}))
    obj = wait_reason(kube, namespace, "m", "ModelResolved", "NotARegistry")
    message = condition(obj, "ModelResolved")["message"]
    assert "HTTP 404" in message and fake_registry.url in message, message
    events = wait_event(kube, namespace, "m", "NotARegistry", "Warning")
    assert "hunter2" not in str(obj["status"]) and not [e for e in events if "hunter2" in e["message"]]
    paths = {path for path, _ in fake_registry.requests}
    assert paths and all(p.startswith("/internal/admin/api/2.0/mlflow/") for p in paths), paths

    # a query string cannot be smuggled in past the CRD (and the parser refuses it too: tests/unit)
    bad = mdep_manifest("q", namespace, "models:/x@champion",
                        registry={"trackingUri": fake_registry.url + "/internal/admin?x="})
    assert apply(control_plane, bad).returncode != 0


# -- one tenant's slow registry slows no one else ----------------------------------------------------------------
def test_a_trickling_registry_in_one_namespace_does_not_delay_another(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, model_name: str,
        fake_registry: FakeMlflow) -> None:
    namespaces = []
    for _ in range(2):
        ns = f"t-{model_name[-8:]}-{len(namespaces)}"
        control_plane.kubectl("create", "namespace", ns)
        namespaces.append(ns)
    slow_ns, other_ns = namespaces
    try:
        registry.register(model_name, alias="champion")
        started = time.monotonic()
        apply(control_plane, mdep_manifest("baseline", other_ns, f"models:/{model_name}@champion"))
        wait_ready(kube, other_ns, "baseline", operator=operator)
        baseline = time.monotonic() - started

        fake_registry.set_alias("slow", "champion", "1")
        fake_registry.mode = "trickle"
        fake_registry.trickle_seconds = 1.5
        for i in range(4):
            apply(control_plane, mdep_manifest(f"slow-{i}", slow_ns, "models:/slow@champion", refreshInterval="1s",
                                               registry={"trackingUri": fake_registry.url}))
        wait_for(lambda: len(fake_registry.requests) >= 2, 30, "the trickling registry to be asked")
        started = time.monotonic()
        apply(control_plane, mdep_manifest("healthy", other_ns, f"models:/{model_name}@champion"))
        wait_ready(kube, other_ns, "healthy", operator=operator)
        took = time.monotonic() - started
        print(f"\nReady without a trickling neighbour: {baseline:.1f}s; with four: {took:.1f}s")
        assert took <= baseline + 10, f"{took:.1f}s with a slow neighbour vs {baseline:.1f}s without"

        # and the slow ones say why, within their total deadline (3 s in these tests), not 40 s later
        obj = wait_reason(kube, slow_ns, "slow-0", "ModelResolved", "RegistryUnreachable", timeout=30)
        assert "did not answer within 3s" in condition(obj, "ModelResolved")["message"]
    finally:
        for ns in namespaces:
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# -- specs that pass the CRD but fail at apply --------------------------------------------------------------------
def test_a_spec_the_api_server_refuses_at_apply_is_reported_in_status(
        control_plane: ControlPlane, kube: Kube, operator: Operator, registry: Registry, namespace: str,
        model_name: str) -> None:
    registry.register(model_name, alias="champion")
    # valid for the CRD, invalid for a Deployment: requests above limits
    bad = mdep_manifest("m", namespace, f"models:/{model_name}@champion",
                        resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})
    assert apply(control_plane, bad).returncode == 0
    obj = wait_reason(kube, namespace, "m", "Ready", "ApplyFailed")
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and "Deployment m" in ready["message"], ready
    assert "less than or equal to cpu limit" in ready["message"], ready
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    wait_event(kube, namespace, "m", "ApplyFailed", "Warning")

    reapply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion",
                                         resources={"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}))
    wait_ready(kube, namespace, "m", timeout=60, operator=operator)
