"""Session fixtures: a real control plane, a real MLflow server, and the real operator process.

Nothing here is mocked. The control plane is built from source (cached in ~/.cache/modelpilot) and
started once per session in its own state directory; set MODELPILOT_TEST_STATE to a directory to
reuse a running one between sessions. Each test gets a fresh namespace.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.controlplane import ControlPlane, ensure_binaries
from hack.proc import wait_for
from hack.services import MlflowServer, PrometheusServer
from modelpilot.kube import Kube
from tests.helpers import Operator, Registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("MODELPILOT_TEST_STATE")
    return Path(explicit).resolve() if explicit else tmp_path_factory.mktemp("devenv")


# -- MLflow ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mlflow_server(state_dir: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(state_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(mlflow_server: MlflowServer) -> Registry:
    return Registry(mlflow_server.url)


@pytest.fixture
def own_mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    """An MLflow of this test's own, which the test may stop and start again (same port, same database)."""
    server = MlflowServer(tmp_path, name="mlflow-own")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def model_name() -> str:
    return f"model-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def prometheus(state_dir: Path) -> Iterator[PrometheusServer]:
    """Prometheus (built from source by hack/build-binaries.sh), scraping every second."""
    server = PrometheusServer(state_dir)
    server.start()
    yield server
    server.stop()


# -- the control plane -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def control_plane(state_dir: Path) -> Iterator[ControlPlane]:
    bin_dir = ensure_binaries()
    cp = ControlPlane(state_dir, bin_dir)
    cp.start()
    try:
        crds = [REPO / "crds",
                # The official Gateway API CRDs (standard channel): canary tests check HTTPRoutes against them.
                (bin_dir / "gateway-api-crds").resolve(),
                # The Prometheus Operator's PrometheusRule CRD: spec.monitoring.latency renders one where served.
                (bin_dir / "prometheus-operator-crds").resolve(),
                # KEDA's ScaledObject CRD: spec.autoscaling.engine keda renders one where it is served.
                (bin_dir / "keda-crds").resolve()]
        for path in crds:
            out = cp.kubectl("apply", "--server-side", "-f", str(path), check=False)
            assert out.returncode == 0, f"the API server refused the CRDs in {path}: {out.stderr}"
        for resource in ("modeldeployments", "httproutes.gateway.networking.k8s.io"):
            wait_for(lambda r=resource: cp.kubectl("get", r, "-A", check=False).returncode == 0,  # type: ignore[misc]
                     30, f"{resource} to be served")
    except BaseException:
        cp.stop()  # not left running for the rest of the machine's life
        raise
    yield cp
    if not os.environ.get("MODELPILOT_TEST_STATE"):
        cp.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    cfg = Configuration()
    kube_config.load_kube_config(config_file=str(control_plane.kubeconfig_path), client_configuration=cfg)
    return Kube(cfg)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- the operator ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, mlflow_server: MlflowServer, state_dir: Path) -> Iterator[Operator]:
    op = Operator(state_dir, control_plane.kubeconfig_path, mlflow_server.url)
    op.start()
    yield op
    op.stop()
