"""Fixtures for the scoring-server tests: real models on disk, real server processes over real HTTP."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hack.proc import free_port
from tests.helpers import Server
from tests.serving import models


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sklearn": models.save_sklearn(root / "sklearn"),
        "frame": models.save_sklearn_proba(root / "frame"),
        "onnx": models.save_onnx(root / "onnx"),
        "flaky": models.save_flaky(root / "flaky"),
        "echo_params": models.save_echo_params(root / "echo_params"),
        "warmup": models.save_warmup_probe(root / "warmup"),
        "centered": models.save_centered(root / "centered"),
        "centered_declared": models.save_centered(root / "centered_declared", declare=True),
    }


StartServer = Callable[..., Server]


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    servers: list[Server] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(model: Path | str, *flags: str, env: dict[str, str] | None = None, wait: bool = True) -> Server:
        port, health_port = free_port(), free_port()
        argv = [sys.executable, "-m", "modelpilot_serve.cli", "--model-uri", str(model), "--port", str(port),
                "--health-port", str(health_port), "--host", "127.0.0.1", "--log-level", "warning", *flags]
        server = Server(argv, port, logs / f"serve-{port}.log", env)
        server.health_url = f"http://127.0.0.1:{health_port}"
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
