"""End to end on kind, for machines with Docker: real images, real pods, a prediction through the Service.

Skipped, with the reason, where no Docker engine answers (kind needs one). `make kind-demo` runs the
same path by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.helpers import REPO

MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2"


def docker_engine() -> str | None:
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    return None if out.returncode == 0 else f"no Docker engine answers (docker info: {out.stderr.strip()[:120]})"


REASON = docker_engine()
pytestmark = [pytest.mark.kind, pytest.mark.skipif(REASON is not None, reason=f"kind needs Docker: {REASON}")]


def run(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=input).stdout


def test_prediction_through_the_service_on_kind(kind_cluster) -> None:  # type: ignore[no-untyped-def]
    kubectl = kind_cluster.kubectl
    run("docker", "build", "-f", str(REPO / "serving-image" / "Dockerfile"), "-t",
        "modelpilot/scoring-server:dev", str(REPO))
    run("docker", "build", "-f", str(REPO / "operator" / "Dockerfile"), "-t", "modelpilot/operator:dev", str(REPO))
    kind_cluster.load_docker_image("modelpilot/scoring-server:dev")
    kind_cluster.load_docker_image("modelpilot/operator:dev")
    kubectl("create", "namespace", "mlflow")
    kubectl("-n", "mlflow", "create", "deployment", "mlflow", f"--image={MLFLOW_IMAGE}", "--port=5000", "--",
            "mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--allowed-hosts", "*",
            "--serve-artifacts", "--artifacts-destination", "/tmp/artifacts")
    kubectl("-n", "mlflow", "expose", "deployment", "mlflow", "--port=5000")
    kubectl("-n", "mlflow", "rollout", "status", "deployment/mlflow", "--timeout=300s")
    from hack.controlplane import ensure_binaries

    run(str(ensure_binaries() / "helm"), "install", "mp",
        str(REPO / "charts" / "modelpilot"), "--kubeconfig", str(kind_cluster.kubeconfig_path),
        "--namespace", "modelpilot-system", "--create-namespace", "--wait",
        "--set", "image.repository=modelpilot/operator", "--set", "image.tag=dev",
        "--set", "registry.trackingUri=http://mlflow.mlflow.svc:5000",
        "--set", "scoringServer.cpuImage=modelpilot/scoring-server:dev",
        "--set", "scoringServer.imagePullPolicy=Never")
    with kind_cluster.port_forward("service/mlflow", 5000, "-n", "mlflow") as port:
        from hack.sample_model import register

        version = register(f"http://127.0.0.1:{port}", "fraud-detector", "champion", trees=10)
    kubectl("apply", "-f", str(REPO / "examples" / "modeldeployment.yaml"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        obj = json.loads(kubectl("get", "mdep", "fraud", "-o", "json"))
        ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        if ready and ready[0]["status"] == "True":
            break
        time.sleep(5)
    else:
        raise AssertionError(kubectl("describe", "mdep", "fraud"))
    assert obj["status"]["model"]["version"] == version
    with kind_cluster.port_forward("service/fraud", 80) as port:
        import requests

        body = {"dataframe_split": {"columns": [f"f{i}" for i in range(20)], "data": [[0.1] * 20]}}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0] in (0, 1)
