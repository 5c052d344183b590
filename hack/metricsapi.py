"""The HPA's metrics APIs for the local control plane, served through the aggregation layer.

Why: `spec.autoscaling` renders an HPA whose metrics the controller-manager's HPA controller reads from
two APIs a platform serves with extension API servers: `custom.metrics.k8s.io` (requests in flight per
pod, `targetInFlight`) from prometheus-adapter reading Prometheus, with the rule platform teams are told
to install (`examples/prometheus-adapter-rules.yaml`); and `metrics.k8s.io` (CPU, `targetCPUUtilization`)
from metrics-server reading the kubelets. Both are built from their Go modules by hack/build-binaries.sh
and run here as processes of this machine. The API server reaches them the way it reaches any extension
API server: an APIService names a Service whose endpoint is this machine's address on the real node's
bridge (the API server routes to endpoints, see hack.controlplane._aggregation); their serving
certificates are the cluster CA's, for the Service's DNS name, and the APIService carries that CA. They
authenticate the API server's front-proxy certificate and ask the API server to authorize each caller,
as they would in a cluster.

While an APIService is registered its server must answer: an unanswered API group fails discovery, which
stalls namespace deletion. `stop()` removes the APIService before it stops the server.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from hack.controlplane import ControlPlane
from hack.layout import Layout
from hack.pki import issue_certificate
from hack.proc import REPO, Processes, free_port, log, wait_for

#: The rule (prometheus-adapter's config file) the README gives platform teams.
ADAPTER_RULES = REPO / "examples" / "prometheus-adapter-rules.yaml"
NAMESPACE = "monitoring"


class ExtensionAPIServer:
    """One extension API server process and its APIService, Service and Endpoints."""

    name = ""  #: the binary, the Service and the process
    group = ""
    version = "v1beta1"

    def __init__(self, state: Path, cp: ControlPlane, address: str) -> None:
        """`address`: where the API server reaches it (an address of this machine that is not loopback:
        Endpoints refuse loopback addresses)."""
        self.cp = cp
        self.address = address
        self.dir = Layout(state).service(self.name)
        self.procs = Processes(self.dir)

    @property
    def api_service(self) -> str:
        return f"{self.version}.{self.group}"

    def args(self) -> list[str]:
        """The server's own flags (beyond serving, TLS and delegated authentication)."""
        raise NotImplementedError

    def start(self) -> None:
        from cryptography import x509

        from hack.controlplane import ensure_binaries

        binary = ensure_binaries() / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        pki = self.cp.pki
        dns = f"{self.name}.{NAMESPACE}.svc"  # the name the API server checks the serving certificate for
        issue_certificate(pki, self.name, dns, server=True, sans=[x509.DNSName(dns)])
        port = free_port()
        kcfg = str(self.cp.kubeconfig_path)
        self.procs.start(self.name, [
            str(binary), *self.args(),
            f"--bind-address={self.address}", f"--secure-port={port}",
            f"--tls-cert-file={pki / f'{self.name}.crt'}", f"--tls-private-key-file={pki / f'{self.name}.key'}",
            f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}", "--v=2",
        ])
        for manifest in self._manifests(port, (pki / "ca.crt").read_bytes()):
            self.cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        started = time.monotonic()
        try:
            wait_for(self.available, 60, f"{self.api_service} to be Available")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.report()}") from None
        log(f"{self.name} serving {self.api_service} in {time.monotonic() - started:.1f}s")

    def available(self) -> bool:
        out = self.cp.kubectl("get", "apiservice", self.api_service, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    def get(self, path: str) -> Any:
        """A GET of this API through the API server (what the HPA controller reads); None unless 200."""
        status, body = self.cp.get(f"/apis/{self.group}/{self.version}/{path}")
        return json.loads(body) if status == 200 else None

    def report(self) -> str:
        out = self.cp.kubectl("get", "apiservice", self.api_service, "-o", "yaml", check=False)
        return f"{out.stdout}{out.stderr}\n{self.name}'s log:\n{self.procs.log_tail(self.name, 30)}"

    def stop(self) -> None:
        self.cp.kubectl("delete", "apiservice", self.api_service, "--ignore-not-found", check=False)
        self.procs.stop(self.name)

    def _manifests(self, port: int, ca: bytes) -> list[dict[str, Any]]:
        meta = {"name": self.name, "namespace": NAMESPACE}
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            # no selector: the one endpoint is this machine, written below
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
             "subsets": [{"addresses": [{"ip": self.address}], "ports": [{"name": "https", "port": port}]}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": self.api_service},
             "spec": {"group": self.group, "version": self.version,
                      "service": {"namespace": NAMESPACE, "name": self.name, "port": 443},
                      "caBundle": base64.b64encode(ca).decode(),
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
        ]


class PrometheusAdapter(ExtensionAPIServer):
    """prometheus-adapter: `custom.metrics.k8s.io` from a Prometheus, with examples/prometheus-adapter-rules.yaml."""

    name = "prometheus-adapter"
    group = "custom.metrics.k8s.io"

    def __init__(self, state: Path, cp: ControlPlane, address: str, prometheus_url: str) -> None:
        super().__init__(state, cp, address)
        self.prometheus_url = prometheus_url

    def args(self) -> list[str]:
        return [f"--config={ADAPTER_RULES}", f"--prometheus-url={self.prometheus_url}",
                # a new pod's series is served within seconds (the default relists every 10 minutes)
                "--metrics-relist-interval=2s", f"--lister-kubeconfig={self.cp.kubeconfig_path}"]

    def pod_metric(self, namespace: str, metric: str) -> list[dict[str, Any]]:
        """The metric of every pod of a namespace that has it."""
        return list((self.get(f"namespaces/{namespace}/pods/*/{metric}") or {}).get("items", []))


class MetricsServer(ExtensionAPIServer):
    """metrics-server: `metrics.k8s.io` (CPU and memory of pods and nodes) from the kubelets' resource metrics."""

    name = "metrics-server"
    group = "metrics.k8s.io"

    def args(self) -> list[str]:
        pki = self.cp.pki
        return [f"--kubeconfig={self.cp.kubeconfig_path}",
                # the kubelet listens on a free port, which its Node status gives
                "--kubelet-use-node-status-port", "--kubelet-preferred-address-types=InternalIP",
                # the real node's serving certificate is the cluster CA's (hack.realnode)
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--metric-resolution=10s", "--kubelet-request-timeout=5s"]  # the shortest resolution it takes

    def pod_cpu(self, namespace: str) -> dict[str, str]:
        """CPU use of each pod of a namespace that has a measurement (pod name → quantity)."""
        items = (self.get(f"namespaces/{namespace}/pods") or {}).get("items", [])
        return {p["metadata"]["name"]: p["containers"][0]["usage"]["cpu"] for p in items if p.get("containers")}
