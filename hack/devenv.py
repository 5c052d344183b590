"""A real local Kubernetes control plane and a real MLflow registry, without Docker.

Why: kind and k3d need Docker, envtest downloads release tarballs; these machines have neither.
`hack/build-binaries.sh` builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and
kubectl from the official sources (cached outside the repo); this module starts them as plain
processes with their own CA, client certificates and ports, registers kwok-simulated nodes (pods
become Running/Ready with an IP, nothing executes), and starts `mlflow server` on sqlite.

Used by `make dev-up` / `make dev-down` (state in .dev/) and by the test suite (its own state dir).

    python -m hack.devenv up   [--state .dev]
    python -m hack.devenv down [--state .dev]
    python -m hack.devenv status [--state .dev]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATE = REPO / ".dev"


# -- small helpers ---------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[devenv] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(interval)
    detail = f" (last error: {last})" if last else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_answers(url: str, ok: tuple[int, ...] = (200,)) -> bool:
    """Whether a local HTTP service answers `url` with one of the `ok` statuses."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status in ok
    except urllib.error.HTTPError as exc:
        return exc.code in ok
    except OSError:
        return False


def ensure_binaries() -> Path:
    """Build (or reuse from the cache) the control-plane binaries; return their directory."""
    out = subprocess.run(["bash", str(REPO / "hack" / "build-binaries.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Processes:
    """Processes started in their own sessions, remembered in pid files so another command can stop them."""

    def __init__(self, state: Path) -> None:
        self.state = state
        (state / "pids").mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logf = open(self.state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
        (self.state / "pids" / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def alive(self, name: str) -> bool:
        pidfile = self.state / "pids" / f"{name}.pid"
        return pidfile.exists() and pid_alive(int(pidfile.read_text()))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        pidfile = self.state / "pids" / f"{name}.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        pidfile.unlink(missing_ok=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.state / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# -- certificates ----------------------------------------------------------------------------------
def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def issue_certificate(pki: Path, file: str, cn: str, org: str | None = None, server: bool = False,
                      sans: list[Any] | None = None) -> None:
    """A key pair and a certificate signed by the CA in `pki` (client auth, or server auth)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key: Any = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    (pki / f"{file}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    _write_key(pki / f"{file}.key", key)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate and the SA key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpilot-dev-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / "ca.key", ca_key)

    sans: list[Any] = [x509.DNSName(n) for n in (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1", *host_ips())]
    issue_certificate(pki, "apiserver", "kube-apiserver", server=True, sans=sans)
    issue_certificate(pki, "admin", "modelpilot-dev-admin", "system:masters")
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa)
    (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def host_ips() -> list[str]:
    """Non-loopback IPv4 addresses of this machine (for the serving certificate)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ip for ip in out.split() if ":" not in ip and not ip.startswith("127.")]


def kubeconfig(server: str, pki: Path, cert: str = "admin") -> dict[str, Any]:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "modelpilot-dev",
        "clusters": [{"name": "modelpilot-dev", "cluster": {
            "server": server, "certificate-authority-data": b64(pki / "ca.crt")}}],
        "users": [{"name": cert, "user": {
            "client-certificate-data": b64(pki / f"{cert}.crt"), "client-key-data": b64(pki / f"{cert}.key")}}],
        "contexts": [{"name": "modelpilot-dev", "context": {"cluster": "modelpilot-dev", "user": cert}}],
    }


# -- the control plane -----------------------------------------------------------------------------
KWOK_NODES = [
    {"name": "kwok-node-0", "gpu": 0},
    {"name": "kwok-gpu-0", "gpu": 4},
]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, as local processes."""

    COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    def __init__(self, state: Path, bin_dir: Path | None = None) -> None:
        self.state = state / "cluster"
        self.bin = bin_dir
        self.procs = Processes(self.state)
        self.pki = self.state / "pki"
        self.kubeconfig_path = self.state / "kubeconfig"
        self.ports_path = self.state / "ports.json"
        self.audit_log = self.state / "audit.log"

    # state shared between commands
    @property
    def ports(self) -> dict[str, int]:
        return json.loads(self.ports_path.read_text()) if self.ports_path.exists() else {}

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def healthy(self) -> bool:
        if not self.ports or not all(self.procs.alive(c) for c in self.COMPONENTS):
            return False
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None
        return subprocess.run([str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig_path), *args],
                              input=input, text=True, capture_output=True, check=check)

    def start(self) -> None:
        if self.healthy():
            log(f"control plane already running at {self.server}")
            return
        self.stop()
        assert self.bin is not None, "binaries are needed to start the control plane"
        started = time.monotonic()
        shutil.rmtree(self.state / "etcd-data", ignore_errors=True)
        make_pki(self.pki)
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok")}
        self.ports_path.write_text(json.dumps(ports))
        self.kubeconfig_path.write_text(json.dumps(kubeconfig(self.server, self.pki)))
        self.kubeconfig_path.chmod(0o600)
        b, p, pki = self.bin, ports, self.pki
        # Audit what service accounts do (metadata only): the RBAC test compares what the operator's
        # ServiceAccount really requested with what the chart grants it.
        audit_policy = self.state / "audit-policy.yaml"
        audit_policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}]}))

        self.procs.start("etcd", [
            str(b / "etcd"), "--name=modelpilot-dev", f"--data-dir={self.state / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
            f"--initial-cluster=modelpilot-dev=http://127.0.0.1:{p['etcd_peer']}",
            "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
        ])
        self.procs.start("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true", "--profiling=false",
            "--enable-priority-and-fairness=false", "--event-ttl=2h",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        ])
        wait_for(lambda: self.get("/readyz")[0] == 200, 120,
                 f"kube-apiserver /readyz\n{self.procs.log_tail('kube-apiserver')}")
        kcfg = str(self.kubeconfig_path)
        self.procs.start("kube-controller-manager", [
            str(b / "kube-controller-manager"), f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={p['kcm']}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--controllers=*,-nodeipam", "--concurrent-deployment-syncs=10", "--concurrent-gc-syncs=10",
        ])
        self.procs.start("kube-scheduler", [
            str(b / "kube-scheduler"), f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}",
        ])
        self.procs.start("kwok", [
            str(b / "kwok"), f"--kubeconfig={kcfg}", f"--config={b / 'stages.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.244.0.1/16", "--node-ip=10.0.0.1", f"--server-address=127.0.0.1:{p['kwok']}",
        ])
        for node in KWOK_NODES:
            self.kubectl("apply", "-f", "-", input=json.dumps(kwok_node(node["name"], int(node["gpu"]))))
        wait_for(lambda: self.kubectl("get", "sa", "default", "-n", "default", check=False).returncode == 0, 60,
                 f"the default ServiceAccount\n{self.procs.log_tail('kube-controller-manager')}")
        wait_for(self._nodes_ready, 60, f"kwok nodes Ready\n{self.procs.log_tail('kwok')}")
        log(f"control plane ready at {self.server} in {time.monotonic() - started:.1f}s")

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        nodes = json.loads(out)["items"]
        ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in n.get("status", {}).get("conditions", []))]
        return len(ready) >= len(KWOK_NODES)

    def stop(self) -> None:
        for name in reversed(self.COMPONENTS):
            self.procs.stop(name)


#: Every simulated node carries this taint (as kwok's own docs do): a pod on a kwok node is Running
#: and Ready but executes nothing, so only pods that ask for it (tests about the API, not about
#: serving) land there; everything else goes to the real node, where it really runs.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


def simulated_node_tolerations() -> list[dict[str, str]]:
    """What a pod spec (or a ModelDeployment's spec.tolerations) needs to run on the kwok nodes."""
    return [{**KWOK_TAINT, "operator": "Equal"}]


def kwok_node(name: str, gpus: int) -> dict[str, Any]:
    capacity: dict[str, Any] = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    spec: dict[str, Any] = {"taints": [dict(KWOK_TAINT)]}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"].append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok",
                       **({"nvidia.com/gpu.present": "true"} if gpus else {})},
        },
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


# -- MLflow ----------------------------------------------------------------------------------------
class MlflowServer:
    """`mlflow server` on sqlite with proxied artifacts (`mlflow-artifacts:/…` sources)."""

    def __init__(self, state: Path, name: str = "mlflow", admin_password: str | None = None,
                 host: str = "127.0.0.1") -> None:
        """With `admin_password`, run MLflow's basic-auth app (user `admin`). `host` is the address to
        listen on: 0.0.0.0 when pods on the real node must reach it (at the node bridge's address)."""
        self.dir = state / name
        self.name = name
        self.admin_password = admin_password
        self.host = host
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
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
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
    """Debian's `prometheus`, scraping whatever targets are listed in files under `targets/` (file_sd).

    Scoring servers are added with `add_target`; Prometheus picks new files up within a second, and
    scrapes every second so a canary analysis over a few seconds has samples.
    """

    def __init__(self, state: Path, name: str = "prometheus") -> None:
        self.dir = state / name
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
        binary = shutil.which("prometheus")
        if binary is None:
            subprocess.run(["bash", str(REPO / "hack" / "system-packages.sh")], check=True)
            binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.targets.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "modelpilot-scoring-servers", "file_sd_configs": [
                {"files": [str(self.targets / "*.json")], "refresh_interval": "1s"}]}],
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

    def stop(self) -> None:
        self.procs.stop("prometheus")


# -- CLI -------------------------------------------------------------------------------------------
@dataclass
class DevEnv:
    cp: ControlPlane
    mlflow: MlflowServer
    #: The tracking URI to hand to the operator and pods (reachable from pods on the real node).
    tracking_uri: str
    #: The scoring-server image imported into the real node's containerd (None without a real node).
    image: str | None


def up(state: Path, real_node: bool = True) -> DevEnv:
    bin_dir = ensure_binaries()
    cp = ControlPlane(state, bin_dir)
    cp.start()
    cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    image = None
    if real_node:
        from hack.realnode import BRIDGE_IP, RealNode

        image = RealNode(cp).start()
        mlflow = MlflowServer(state, host="0.0.0.0")
        mlflow.start()
        tracking_uri = f"http://{BRIDGE_IP}:{mlflow.port}"
    else:
        mlflow = MlflowServer(state)
        mlflow.start()
        tracking_uri = mlflow.url
    shutil.copy(cp.kubeconfig_path, state / "kubeconfig")
    (state / "kubeconfig").chmod(0o600)
    (state / "env").write_text(
        f"export KUBECONFIG={state / 'kubeconfig'}\n"
        f"export MLFLOW_TRACKING_URI={tracking_uri}\n"
        f"export MODELPILOT_DEFAULT_TRACKING_URI={tracking_uri}\n"
        + (f"export MODELPILOT_SERVER_IMAGE_CPU={image}\nexport MODELPILOT_SERVER_IMAGE_PULL_POLICY=Never\n"
           if image else "")
        + f"export PATH={bin_dir}:$PATH\n")
    log(f"ready: source {state / 'env'}")
    return DevEnv(cp, mlflow, tracking_uri, image)


def down(state: Path) -> None:
    from hack.realnode import RealNode

    for pidfile in (state / "operator" / "pids").glob("*.pid") if (state / "operator").exists() else []:
        Processes(state / "operator").stop(pidfile.stem)
    MlflowServer(state).stop()
    RealNode(ControlPlane(state)).stop()
    ControlPlane(state).stop()
    log("stopped")


def status(state: Path) -> int:
    cp, mlflow = ControlPlane(state), MlflowServer(state)
    ok_cp, ok_ml = cp.healthy(), mlflow.healthy()
    print(f"control plane: {'running at ' + cp.server if ok_cp else 'stopped'}")
    print(f"mlflow:        {'running at ' + mlflow.url if ok_ml else 'stopped'}")
    if ok_cp:
        from hack.realnode import NODE_NAME, RealNode

        print(f"real node:     {NODE_NAME + ' Ready' if RealNode(cp).ready() else 'not running'}")
    return 0 if ok_cp and ok_ml else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.devenv", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state directory (default .dev)")
    parser.add_argument("--no-real-node", action="store_true",
                        help="kwok nodes only (no kubelet/containerd node, no image build)")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if args.command == "up":
        up(state, real_node=not args.no_real_node)
    elif args.command == "down":
        down(state)
    elif args.command == "build":
        print(ensure_binaries())
    else:
        return status(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
