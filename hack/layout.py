"""Where everything of one local environment lives: the one owner of a state directory's layout.

`make dev-up` uses `.dev/`; the test suite a temporary directory (or MODELPILOT_TEST_STATE). Every
service, the node, the operator and the demo ask this class for their directory instead of joining
path names of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def cluster(self) -> Path:
        """The control plane: its processes' pids and logs, etcd's data, the PKI."""
        return self.root / "cluster"

    @property
    def pki(self) -> Path:
        return self.cluster / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.cluster / "kubeconfig"

    @property
    def ports(self) -> Path:
        return self.cluster / "ports.json"

    @property
    def audit_log(self) -> Path:
        return self.cluster / "audit.log"

    @property
    def node(self) -> Path:
        """The real node: containerd's state, the kubelet's and kube-proxy's configuration."""
        return self.root / "node"

    def service(self, name: str) -> Path:
        """A local service's own directory: `mlflow`, `prometheus`, `operator`, ..."""
        return self.root / name

    @property
    def user_kubeconfig(self) -> Path:
        """The kubeconfig handed to people (`source .dev/env`)."""
        return self.root / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.root / "env"
