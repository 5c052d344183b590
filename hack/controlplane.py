"""The local control plane: etcd, kube-apiserver, controller-manager, scheduler and kwok as processes.

Binaries come from `hack/build-binaries.sh` (built from source, cached outside the repo). The kwok
nodes are simulated: pods there are Running/Ready with an IP and execute nothing, so they carry a
taint (`KWOK_TAINT`) and only pods that tolerate it land there.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hack.layout import Layout
from hack.pki import FRONT_PROXY_CLIENT, host_ips, kubeconfig, make_pki
from hack.proc import REPO, Processes, free_port, log, wait_for


def ensure_binaries() -> Path:
    """Build (or reuse from the cache) the control-plane binaries; return their directory."""
    out = subprocess.run(["bash", str(REPO / "hack" / "build-binaries.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


#: (name, GPUs) of the simulated nodes.
KWOK_NODES: tuple[tuple[str, int], ...] = (("kwok-node-0", 0), ("kwok-gpu-0", 4))


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, as local processes."""

    COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    def __init__(self, state: Path, bin_dir: Path | None = None) -> None:
        self.layout = Layout(state)
        self.state = self.layout.cluster
        self.bin = bin_dir
        self.procs = Processes(self.state)
        self.pki = self.layout.pki
        self.kubeconfig_path = self.layout.admin_kubeconfig
        self.ports_path = self.layout.ports
        self.audit_log = self.layout.audit_log

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
            *_reachability(p["apiserver"]),
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true", "--profiling=false",
            "--enable-priority-and-fairness=false", "--event-ttl=2h",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
            *_aggregation(pki),
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
            # HPAs act within seconds (default every 15 s), so the autoscaling test watches them in a minute
            "--horizontal-pod-autoscaler-sync-period=3s",
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
        for name, gpus in KWOK_NODES:
            self.kubectl("apply", "-f", "-", input=json.dumps(kwok_node(name, gpus)))
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


def _aggregation(pki: Path) -> list[str]:
    """The aggregation layer, for extension API servers (the HPA's metrics APIs, hack.metricsapi): the API
    server proxies to them with the front-proxy client certificate and the caller's identity in headers;
    it reaches them at their Service's endpoint address (no ClusterIP routing needed on the host)."""
    return [f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--enable-aggregator-routing=true"]


def _reachability(port: int) -> list[str]:
    """How the API server listens. Pods on the real node (the Helm-installed operator) reach it through
    the `kubernetes` Service, whose endpoint is the advertise address: the machine's own address, which
    pods reach through the node bridge. Without one (no non-loopback address), it stays on loopback."""
    ips = host_ips()
    if not ips:
        return ["--bind-address=127.0.0.1", f"--secure-port={port}", "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none"]
    # Listening on every address: every request must then carry a certificate of this environment's
    # CA or a ServiceAccount token (no anonymous access from the network).
    return ["--bind-address=0.0.0.0", f"--secure-port={port}", f"--advertise-address={ips[0]}",
            "--anonymous-auth=false",
            "--endpoint-reconciler-type=lease",
            # `kubectl logs`/`exec` reach the kubelet by the node's address (its name is in no DNS)
            "--kubelet-preferred-address-types=InternalIP,Hostname"]
