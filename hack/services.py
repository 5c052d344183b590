"""Local services the tests and the demo talk to: a real MLflow tracking server and Debian's Prometheus."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hack.layout import Layout
from hack.proc import Processes, free_port, http_answers, log, wait_for


class MlflowServer:
    """`mlflow server` on sqlite with proxied artifacts (`mlflow-artifacts:/…` sources)."""

    def __init__(self, state: Path, name: str = "mlflow", admin_password: str | None = None,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        """With `admin_password`, run MLflow's basic-auth app (user `admin`). `host` is the address to
        listen on: 0.0.0.0 when pods on the real node must reach it (at the node bridge's address)."""
        self.dir = Layout(state).service(name)
        self.name = name
        self.admin_password = admin_password
        self.host = host
        #: More environment for `mlflow server` (e.g. its webhook settings).
        self.env = dict(env or {})
        self.procs = Processes(self.dir)
        self.port_path = self.dir / "port"

    @property
    def port(self) -> int:
        return int(self.port_path.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        if not self.port_path.exists() or not self.procs.alive("mlflow"):
            return False
        # the basic-auth app guards /health too: a 401 means it answers, so it is up
        return http_answers(self.url + "/health", ok=(200, 401))

    def start(self, port: int | None = None) -> None:
        """Start (or keep) the server; a restart reuses the same port and database."""
        if self.healthy():
            return
        self.procs.stop("mlflow")
        self.dir.mkdir(parents=True, exist_ok=True)
        if port is None:
            port = self.port if self.port_path.exists() else free_port()
        self.port_path.write_text(str(port))
        mlflow = Path(sys.executable).parent / "mlflow"
        started = time.monotonic()
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        auth: list[str] = []
        if self.admin_password:
            auth = ["--app-name", "basic-auth"]
            # Its own auth config: MLflow's default keeps the user database in ./basic_auth.db (the cwd).
            ini = self.dir / "basic_auth.ini"
            ini.write_text("[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = sqlite:///{self.dir / 'basic_auth.db'}\nadmin_username = admin\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            env.update(MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password, MLFLOW_AUTH_CONFIG_PATH=str(ini),
                       MLFLOW_FLASK_SERVER_SECRET_KEY="modelpilot-dev-only")
        self.procs.start("mlflow", [
            str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.dir / 'mlflow.db'}",
            "--artifacts-destination", str(self.dir / "artifacts"), "--serve-artifacts",
            "--host", self.host, "--port", str(port), "--workers", "1", *auth,
        ], env=env)
        wait_for(self.healthy, 120, f"mlflow server on port {port}\n{self.procs.log_tail('mlflow')}")
        log(f"mlflow server ready at {self.url} in {time.monotonic() - started:.1f}s")

    def stop(self) -> None:
        self.procs.stop("mlflow")


class PrometheusServer:
    """Prometheus (built from source, see hack/build-binaries.sh), scraping the targets listed in files under
    `targets/` (file_sd) and any extra jobs given (e.g. Kubernetes pod discovery).

    Scoring servers are added with `add_target`; Prometheus picks new files up within a second, and
    scrapes every second so a canary analysis over a few seconds has samples.
    """

    def __init__(self, state: Path, name: str = "prometheus",
                 scrape_configs: list[dict[str, Any]] | None = None) -> None:
        """`scrape_configs`: more jobs beside the file_sd one (e.g. Kubernetes pod discovery)."""
        self.extra_jobs = list(scrape_configs or [])
        self.dir = Layout(state).service(name)
        self.procs = Processes(self.dir)
        self.port_path = self.dir / "port"
        self.targets = self.dir / "targets"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.port_path.read_text())}"

    def healthy(self) -> bool:
        if not self.port_path.exists() or not self.procs.alive("prometheus"):
            return False
        return http_answers(self.url + "/-/ready")

    def start(self) -> None:
        if self.healthy():
            return
        # Prometheus built from source by hack/build-binaries.sh (with Kubernetes service discovery,
        # which Debian's package lacks)
        from hack.controlplane import ensure_binaries

        binary = str(ensure_binaries() / "prometheus")
        self.targets.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "modelpilot-scoring-servers", "file_sd_configs": [
                {"files": [str(self.targets / "*.json")], "refresh_interval": "1s"}]}, *self.extra_jobs],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=1))
        port = free_port()
        self.port_path.write_text(str(port))
        self.procs.start("prometheus", [
            binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h",
        ])
        wait_for(self.healthy, 60, f"prometheus on port {port}\n{self.procs.log_tail('prometheus')}")
        log(f"prometheus ready at {self.url}")

    def add_target(self, name: str, address: str, labels: dict[str, str]) -> None:
        tmp = self.targets / f".{name}.tmp"
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        tmp.rename(self.targets / f"{name}.json")  # atomic: Prometheus never reads half a file

    def remove_target(self, name: str) -> None:
        (self.targets / f"{name}.json").unlink(missing_ok=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The series of an instant query (for tests that check what Prometheus saw)."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.procs.stop("prometheus")
