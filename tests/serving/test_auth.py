"""Authenticated scoring endpoints over real HTTP: API keys from a directory that rotates in place, and
Kubernetes tokens checked by the real API server (TokenReview with an audience + SubjectAccessReview)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from hack.controlplane import ControlPlane
from hack.proc import wait_for
from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS

ONE = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[0.1, 0.2, 0.3, 0.4, 0.5]]}})


def call(server: Server, headers: dict[str, str] | None = None, path: str = "/invocations") -> requests.Response:
    return requests.post(server.url + path, data=ONE, timeout=30,
                         headers={"Content-Type": "application/json", **(headers or {})})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_paths_answer(server: Server) -> None:
    for path in ("/ping", "/health", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert requests.get(server.url + path, timeout=5).status_code == 200, path


def metric(server: Server, name: str, having: str = "") -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and having in line)


def failures(server: Server, reason: str) -> float:
    return metric(server, "modelpilot_auth_failures_total", f'reason="{reason}"')


def test_api_keys_401_403_200_and_they_rotate_without_a_restart(start_server: StartServer,
                                                                 model_dirs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team-a").write_text("first-key\n")
    server = start_server(model_dirs["sklearn"], "--auth-mode", "api-key", "--auth-api-keys-dir", str(keys))

    missing = call(server)
    assert missing.status_code == 401 and missing.json()["error_code"] == "UNAUTHENTICATED"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = call(server, bearer("second-key"))
    assert wrong.status_code == 403 and wrong.json()["error_code"] == "PERMISSION_DENIED"
    assert "first-key" not in wrong.text and "second-key" not in wrong.text
    assert call(server, bearer("first-key")).status_code == 200
    assert call(server, {"X-API-Key": "first-key"}).status_code == 200
    assert call(server, {"X-API-Key": "first-key"}, "/v2/models/sklearn/infer").status_code != 401
    assert requests.get(server.url + "/v2/models/sklearn", timeout=5).status_code == 401  # metadata too
    open_paths_answer(server)
    assert failures(server, "unauthenticated") >= 2 and failures(server, "forbidden") == 1

    # Rotation as kubelet does it for a mounted Secret: the files change in place, the process stays.
    pid = server.proc.pid
    (keys / "team-b").write_text("second-key")
    (keys / "team-a").unlink()
    wait_for(lambda: call(server, bearer("second-key")).status_code == 200, 10, "the new key to be accepted")
    assert call(server, bearer("first-key")).status_code == 403
    assert server.proc.pid == pid and server.proc.poll() is None


def test_a_guard_that_cannot_work_stops_the_server_with_the_reason(start_server: StartServer,
                                                                     model_dirs: dict[str, Path]) -> None:
    server = start_server(model_dirs["sklearn"], "--auth-mode", "kubernetes", wait=False)
    assert server.proc.wait(60) != 0
    assert "needs --auth-resource NAMESPACE/NAME" in server.logs() and "Traceback" not in server.logs()


@pytest.fixture(scope="module")
def reviewer(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The token a serving pod would have: a ServiceAccount bound to system:auth-delegator."""
    ns = "modelpilot-auth-test"
    control_plane.kubectl("create", "namespace", ns, check=False)
    control_plane.kubectl("create", "serviceaccount", "model", "-n", ns, check=False)
    control_plane.kubectl("create", "clusterrolebinding", "modelpilot-auth-test-reviewer",
                          "--clusterrole=system:auth-delegator", f"--serviceaccount={ns}:model", check=False)
    path = tmp_path_factory.mktemp("reviewer") / "token"
    path.write_text(control_plane.kubectl("create", "token", "model", "-n", ns).stdout.strip())
    return path


def token(cp: ControlPlane, namespace: str, sa: str, audience: str | None = "modelpilot") -> str:
    cp.kubectl("create", "serviceaccount", sa, "-n", namespace, check=False)
    args = ["create", "token", sa, "-n", namespace] + (["--audience", audience] if audience else [])
    return cp.kubectl(*args).stdout.strip()


def test_kubernetes_tokens_are_checked_by_the_api_server(start_server: StartServer, model_dirs: dict[str, Path],
                                                         control_plane: ControlPlane, reviewer: Path,
                                                         namespace: str) -> None:
    server = start_server(model_dirs["sklearn"], "--auth-mode", "kubernetes",
                          "--auth-resource", f"{namespace}/fraud", env={
                              "MODELPILOT_KUBE_API_URL": control_plane.server,
                              "MODELPILOT_KUBE_TOKEN_FILE": str(reviewer),
                              "MODELPILOT_KUBE_CA_FILE": str(control_plane.pki / "ca.crt")})
    caller = token(control_plane, namespace, "caller")

    assert call(server).status_code == 401
    assert call(server, bearer("not-a-token")).status_code == 401
    # A token for the API server's own audience is refused: a model must not be able to replay it there.
    assert call(server, bearer(token(control_plane, namespace, "caller", audience=None))).status_code == 401
    denied = call(server, bearer(caller))
    assert denied.status_code == 403 and "modeldeployments/predict" in denied.json()["message"]

    control_plane.kubectl("create", "role", "predict-fraud", "-n", namespace, "--verb=create",
                          "--resource=modeldeployments.modelpilot.dev/predict", "--resource-name=fraud")
    control_plane.kubectl("create", "rolebinding", "caller-predicts", "-n", namespace, "--role=predict-fraud",
                          f"--serviceaccount={namespace}:caller")
    wait_for(lambda: call(server, bearer(caller)).status_code == 200, 30, "the Role to let the caller in")
    # Another model in the namespace is not covered by that Role.
    other = start_server(model_dirs["sklearn"], "--auth-mode", "kubernetes", "--auth-resource",
                         f"{namespace}/other", env={"MODELPILOT_KUBE_API_URL": control_plane.server,
                                                    "MODELPILOT_KUBE_TOKEN_FILE": str(reviewer),
                                                    "MODELPILOT_KUBE_CA_FILE": str(control_plane.pki / "ca.crt")})
    assert call(other, bearer(caller)).status_code == 403
    open_paths_answer(server)

    # Cached: a burst of calls with the same token costs the API server one review, not one per call.
    before = metric(server, "modelpilot_auth_reviews_total")
    assert all(call(server, bearer(caller)).status_code == 200 for _ in range(50))
    assert metric(server, "modelpilot_auth_reviews_total") - before <= 1


def test_an_api_server_that_does_not_answer_is_a_401_to_retry_never_a_5xx(
        start_server: StartServer, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections into the backlog, never answers
    own = tmp_path / "token"
    own.write_text("a.b.c")
    try:
        server = start_server(model_dirs["sklearn"], "--auth-mode", "kubernetes", "--auth-resource", "ns/m", env={
            "MODELPILOT_KUBE_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "MODELPILOT_KUBE_TOKEN_FILE": str(own), "MODELPILOT_KUBE_CA_FILE": ""})
        assert call(server, bearer("not a jwt")).status_code == 401  # refused without asking anyone
        assert metric(server, "modelpilot_auth_reviews_total") == 0
        r = call(server, bearer("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"))
        assert r.status_code == 401 and r.headers["Retry-After"] == "1", r.text
        assert "did not answer" in r.json()["message"]
        assert failures(server, "unverifiable") == 1
    finally:
        silent.close()
