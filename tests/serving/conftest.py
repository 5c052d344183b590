"""Fixtures for the scoring-server tests: real models on disk, real server processes over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from hack.devenv import free_port, wait_for
from tests.serving import models


class Server:
    """A `modelpilot-serve` (or `mlflow models serve`) process on a free port."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def wait(self, path: str = "/ping", timeout: float = 120) -> Server:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + path, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout, f"{self.url}{path}")
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def post(self, path: str, body: bytes | str, content_type: str = "application/json",
             timeout: float = 30) -> requests.Response:
        data = body.encode() if isinstance(body, str) else body
        return requests.post(self.url + path, data=data, headers={"Content-Type": content_type}, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sklearn": models.save_sklearn(root / "sklearn"),
        "frame": models.save_sklearn_proba(root / "frame"),
        "onnx": models.save_onnx(root / "onnx"),
        "flaky": models.save_flaky(root / "flaky"),
    }


StartServer = Callable[..., Server]


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    servers: list[Server] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(model: Path | str, *flags: str, env: dict[str, str] | None = None, wait: bool = True) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "modelpilot_serve.cli", "--model-uri", str(model), "--port", str(port),
                "--host", "127.0.0.1", "--log-level", "warning", *flags]
        server = Server(argv, port, logs / f"serve-{port}.log", env)
        servers.append(server)
        return server.wait() if wait else server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def sklearn_server(start_server: StartServer, model_dirs: dict[str, Path]) -> Server:
    return start_server(model_dirs["sklearn"], "--max-body-bytes", "1000000", "--model-name", "rf",
                        "--model-version", "1")


@pytest.fixture(scope="session")
def mlflow_reference(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MLflow's own `mlflow models serve` on the same model: the reference for response equality."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = Server([str(mlflow), "models", "serve", "-m", str(model_dirs["sklearn"]), "-p", str(port),
                     "-h", "127.0.0.1", "--env-manager", "local", "-w", "1"], port,
                    tmp_path_factory.mktemp("ref") / "mlflow-serve.log",
                    # mlflow execs `uvicorn` from PATH
                    env={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
    yield server.wait(timeout=180)
    server.stop()


__all__ = ["Server", "StartServer", "time"]
