"""A real `mlflow server` (SQL backend) sends alias webhooks to the operator: the Deployment follows in
seconds although refreshInterval is an hour."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from hack.controlplane import ControlPlane
from hack.proc import free_port
from hack.services import MlflowServer
from modelpilot.kube import Kube
from tests.helpers import Operator, Registry, apply, mdep_manifest, wait_for, wait_ready

pytestmark = pytest.mark.cluster

SECRET = "webhook-test-secret"


@pytest.fixture
def webhook_mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path, name="mlflow-webhooks", env={
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",  # the operator listens on 127.0.0.1
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        # MLflow caches who subscribes to an event (60 s by default): a new webhook counts after that
        "MLFLOW_WEBHOOK_CACHE_TTL": "2",
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture
def webhook_operator(control_plane: ControlPlane, webhook_mlflow: MlflowServer, operator: Operator,
                     tmp_path: Path) -> Iterator[Operator]:
    own = Operator(tmp_path / "op", control_plane.kubeconfig_path, webhook_mlflow.url)
    port = free_port()
    own.env.update(MODELPILOT_WEBHOOK_PORT=str(port), MODELPILOT_WEBHOOK_SECRET=SECRET)
    own.webhook_url = f"http://127.0.0.1:{port}/webhooks/mlflow"  # type: ignore[attr-defined]
    with own.in_place_of(operator):
        yield own


def test_an_alias_move_reaches_the_deployment_within_seconds_by_webhook(
        control_plane: ControlPlane, kube: Kube, webhook_mlflow: MlflowServer, webhook_operator: Operator,
        namespace: str, model_name: str) -> None:
    registry = Registry(webhook_mlflow.url)
    registry.client().create_webhook(
        name=f"modelpilot-{namespace}", url=webhook_operator.webhook_url,  # type: ignore[attr-defined]
        events=["model_version_alias.created", "model_version_alias.deleted"], secret=SECRET)
    registry.register(model_name, alias="champion", seed=0)
    v2 = registry.register(model_name, seed=1)
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", refreshInterval="1h"))
    wait_ready(kube, namespace, "m", operator=webhook_operator, version="1")

    registry.set_alias(model_name, "champion", v2)
    moved = time.monotonic()

    def version() -> str | None:
        dep = kube.get("apps/v1", "Deployment", namespace, "m")
        return (dep or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get(
            "modelpilot.dev/model-version")

    wait_for(lambda: version() == v2, 5, f"the Deployment to follow the alias by webhook\n{webhook_operator.logs()}")
    print(f"Deployment on version {v2} {time.monotonic() - moved:.1f}s after the alias moved")
    assert webhook_operator.metric("modelpilot_webhooks_total", result="accepted") >= 1
    wait_for(lambda: ((kube.get("modelpilot.dev/v1alpha1", "ModelDeployment", namespace, "m") or {}).get(
        "status", {}).get("model") or {}).get("resolvedBy") == "webhook", 10, "status.model.resolvedBy: webhook")
    # a forged delivery: refused and counted, nothing enqueued
    import requests

    forged = requests.post(webhook_operator.webhook_url, data=b'{"entity":"model_version_alias"}',  # type: ignore[attr-defined]
                           headers={"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Timestamp": str(int(time.time())),
                                    "X-MLflow-Delivery-Id": "forged"}, timeout=5)
    assert forged.status_code == 401
    assert webhook_operator.metric("modelpilot_webhooks_total", result="bad_signature") == 1
