"""One real node for the local control plane: pods that actually run the scoring-server image.

Why: kwok nodes run nothing. This node is a kubelet built from the same Kubernetes sources as the
control plane, Debian's containerd (CRI) with runc, Debian's CNI plugins (bridge + host-local) and
kube-proxy (iptables) for Service ClusterIPs, all as plain processes with private state, on a machine
with no Docker engine and no image registry. Images are built without Docker: a Debian root
filesystem from debootstrap becomes a local base image, buildah builds `serving-image/Dockerfile` on
it (the same file users build with Docker), and the OCI archive is imported into containerd. The
sandbox ("pause") image is a tiny Go binary built here (hack/pause).

The node has no taint: a plain ModelDeployment (no tolerations) lands here and really serves. The
kwok nodes are the tainted ones (hack.controlplane.KWOK_TAINT); tests about the API tolerate that taint.
The node is labelled `modelpilot.dev/real-node=true` for tests that must be sure to land here.

Caches (outside the repo, `~/.cache/modelpilot/images`): the base root filesystem (keyed by suite)
and the serving image (keyed by a hash of serving-image/: its Dockerfile, its pyproject.toml and the
scoring server's sources), so a warm start only imports archives.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import subprocess
import time
from pathlib import Path

from hack.controlplane import ControlPlane
from hack.images import PAUSE_IMAGE, SERVING, build_image, build_pause_image, run
from hack.pki import issue_certificate, kubeconfig
from hack.proc import REPO, Processes, free_port, log, wait_for

NODE_NAME = "real-node-0"
#: Pods on the real node get addresses from this range; the host side of the bridge is .1.
POD_CIDR = "10.88.0.0/16"
BRIDGE = "mp0"
BRIDGE_IP = "10.88.0.1"


def node_selector() -> dict[str, str]:
    return {"modelpilot.dev/real-node": "true"}


# -- the node --------------------------------------------------------------------------------------
class RealNode:
    """containerd + kubelet + kube-proxy for one node of a running ControlPlane."""

    COMPONENTS = ("containerd", "kubelet", "kube-proxy")

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.dir = cp.layout.node
        self.procs = Processes(self.dir)
        self.sock = self.dir / "containerd.sock"
        self.image: str | None = None

    @property
    def runc_root(self) -> Path:
        return self.dir / "runc"

    def ctr(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run("ctr", "--address", self.sock, "--namespace", "k8s.io", *args)

    def ready(self) -> bool:
        out = self.cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def start(self) -> str:
        """Start (or keep) the node; return the serving image name, imported and ready to run."""
        assert self.cp.bin is not None
        other = _other_node(self.dir)
        if other is not None:
            raise RuntimeError(
                f"another real node is running on this machine (state in {other}); only one fits (they share "
                f"the bridge {BRIDGE} and kube-proxy's iptables chains). Stop it first: `make dev-down` for "
                "the demo's .dev, or `python -m hack.devenv down --state DIR`.")
        subprocess.run(["bash", str(REPO / "hack" / "system-packages.sh"), "--node"], check=True)
        image, archive = build_image(SERVING)
        pause = build_pause_image()
        self.image = image
        if all(self.procs.alive(c) for c in self.COMPONENTS) and self.ready():
            self._import(archive, image)
            return image
        self.stop()
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._network()
        self._start_containerd()
        self._import(pause, PAUSE_IMAGE)
        self._import(archive, image)
        self._start_kubelet()
        self._start_kube_proxy()
        wait_for(self.ready, 120, f"node {NODE_NAME} Ready\n{self.procs.log_tail('kubelet', 40)}")
        log(f"real node {NODE_NAME} ready in {time.monotonic() - started:.1f}s (image {image})")
        return image

    def import_image(self, archive: Path, name: str) -> None:
        """Make an image (an OCI archive) runnable on this node, e.g. the operator's for the Helm chart."""
        self._import(archive, name)

    def _import(self, archive: Path, name: str) -> None:
        if name in self.ctr("images", "ls", "-q").stdout.split():
            return
        self.ctr("images", "import", "--no-unpack", archive)
        self.ctr("images", "ls")  # fails loudly if containerd lost it
        log(f"imported {name} into containerd")

    def _network(self) -> None:
        """The pod bridge, created up front with the host's address on it, so the host (MLflow, the
        operator) can be reached from pods at BRIDGE_IP before the first pod exists."""
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            run("ip", "link", "add", BRIDGE, "type", "bridge")
        with contextlib.suppress(subprocess.CalledProcessError):
            run("ip", "addr", "add", f"{BRIDGE_IP}/16", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        for knob, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
            path = Path("/proc/sys") / knob
            if not path.exists() and "bridge" in knob:
                with contextlib.suppress(OSError):  # no modprobe: the kernel may have it built in
                    subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
            with contextlib.suppress(OSError):
                path.write_text(value)
        cni = self.dir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-modelpilot.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "modelpilot",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=1))

    def _start_containerd(self) -> None:
        config = self.dir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{self.dir / 'containerd-root'}"
state = "{self.dir / 'containerd-state'}"
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine lets no process lower its oom_score_adj (the kubelet asks -998 for sandboxes).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.dir / 'cni'}"
""")
        self.procs.start("containerd", ["containerd", "--config", str(config)])
        wait_for(lambda: self.sock.exists() and subprocess.run(
            ["ctr", "--address", str(self.sock), "version"], capture_output=True).returncode == 0, 60,
            f"containerd\n{self.procs.log_tail('containerd')}")

    def _start_kubelet(self) -> None:
        assert self.cp.bin is not None
        pki = self.cp.pki
        if not (pki / f"node-{NODE_NAME}.crt").exists():
            # the Node authorizer's identity: CN system:node:<name>, O system:nodes
            issue_certificate(pki, f"node-{NODE_NAME}", f"system:node:{NODE_NAME}", "system:nodes")
        serving = f"node-{NODE_NAME}-serving"
        if not (pki / f"{serving}.crt").exists():
            # a serving certificate of the cluster CA (not the kubelet's self-signed one): metrics-server
            # verifies it (hack.metricsapi)
            from cryptography import x509

            issue_certificate(pki, serving, f"system:node:{NODE_NAME}", "system:nodes", server=True,
                              sans=[x509.IPAddress(ipaddress.ip_address(BRIDGE_IP)), x509.DNSName(NODE_NAME)])
        kcfg = self.dir / "kubelet.kubeconfig"
        kcfg.write_text(json.dumps(kubeconfig(self.cp.server, pki, f"node-{NODE_NAME}")))
        kcfg.chmod(0o600)
        config = self.dir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(pki / f"{serving}.crt"), "tlsPrivateKeyFile": str(pki / f"{serving}.key"),
            # on the node address: the API server reaches it there for `kubectl logs` and `exec`
            "address": BRIDGE_IP, "port": free_port(), "readOnlyPort": 0, "healthzPort": 0,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            # This machine has cgroup v1 and no systemd: cgroupfs, no per-QoS hierarchy.
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [], "failSwapOn": False, "localStorageCapacityIsolation": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "resolvConf": "",
            "staticPodPath": "", "podCIDR": POD_CIDR, "maxPods": 50,
            "syncFrequency": "5s", "nodeStatusUpdateFrequency": "5s",
        }))
        self.procs.start("kubelet", [
            str(self.cp.bin / "kubelet"), f"--config={config}", f"--kubeconfig={kcfg}",
            f"--root-dir={self.dir / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={BRIDGE_IP}",
            "--node-labels=modelpilot.dev/real-node=true", "--v=1",
        ])

    def _start_kube_proxy(self) -> None:
        assert self.cp.bin is not None
        config = self.dir / "kube-proxy.yaml"
        kcfg = self.dir / "kube-proxy.kubeconfig"
        kcfg.write_text(json.dumps(kubeconfig(self.cp.server, self.cp.pki)))
        kcfg.chmod(0o600)
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
            "clientConnection": {"kubeconfig": str(kcfg)},
            "bindAddress": "127.0.0.1", "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "conntrack": {"maxPerCore": 0}, "iptables": {"syncPeriod": "1s", "minSyncPeriod": "0s"},
        }))
        # --v=2: each rules sync logs how long it took, so a test that finds a Service unreachable can tell
        # a slow or failing kube-proxy from a missing endpoint
        self.procs.start("kube-proxy", [str(self.cp.bin / "kube-proxy"), f"--config={config}", "--v=2"])

    def proxy_report(self, cluster_ip: str) -> str:
        """What kube-proxy has programmed for a ClusterIP and what it last logged: for a failing test's message.

        Without a rule, a ClusterIP is not routed to the node at all: the packet leaves by the default route
        and whatever answers there (a refusal, or an egress proxy's 404) is no pod's answer."""
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        rules = [line for line in nat.splitlines() if cluster_ip in line] or ["(no nat rule names it)"]
        lines = self.procs.log_tail("kube-proxy", 2000).splitlines()
        complaints = [line[:400] for line in lines if line[:1] in "EW"]
        syncs = [line for line in lines if "SyncProxyRules complete" in line]
        return "\n".join([f"kube-proxy rules for {cluster_ip}:", *rules, "kube-proxy's last errors and warnings:",
                          *complaints[-10:], "its last rule syncs:", *syncs[-10:]])

    def stop(self) -> None:
        self.procs.stop("kube-proxy")
        self.procs.stop("kubelet")
        # Containers outlive containerd (their shims are detached): kill them through runc first.
        for root in glob.glob(str(self.runc_root / "*")):
            out = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True)
            for cid in out.stdout.split():
                subprocess.run(["runc", "--root", root, "kill", cid, "KILL"], capture_output=True)
                subprocess.run(["runc", "--root", root, "delete", "--force", cid], capture_output=True)
        with contextlib.suppress(OSError):
            subprocess.run(["pkill", "-KILL", "-f", f"containerd-shim-runc-v2 .*-address {self.sock}"],
                           capture_output=True)
        self.procs.stop("containerd")
        for mount in reversed(_mounts_under(self.dir)):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def _other_node(ours: Path) -> Path | None:
    """The state directory of a real node's kubelet running from another state directory, if any."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if not argv[0].endswith(b"kubelet") or f"--hostname-override={NODE_NAME}".encode() not in argv:
                continue
            root = next((a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--root-dir=")), "")
            if root and Path(root).parent != ours:
                return Path(root).parent
    return None


def _mounts_under(root: Path) -> list[str]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(root) + "/"
    return [line.split()[1] for line in lines if line.split()[1].startswith(prefix)]
