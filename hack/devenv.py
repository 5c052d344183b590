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
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hack.controlplane import ControlPlane, ensure_binaries
from hack.layout import Layout
from hack.proc import REPO, Processes, log
from hack.realnode import BRIDGE_IP, NODE_NAME, RealNode
from hack.services import MlflowServer

DEFAULT_STATE = REPO / ".dev"


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
        image = RealNode(cp).start()
        mlflow = MlflowServer(state, host="0.0.0.0")
        mlflow.start()
        tracking_uri = f"http://{BRIDGE_IP}:{mlflow.port}"
    else:
        mlflow = MlflowServer(state)
        mlflow.start()
        tracking_uri = mlflow.url
    layout = Layout(state)
    shutil.copy(cp.kubeconfig_path, layout.user_kubeconfig)
    layout.user_kubeconfig.chmod(0o600)
    layout.env_file.write_text(
        f"export KUBECONFIG={layout.user_kubeconfig}\n"
        f"export MLFLOW_TRACKING_URI={tracking_uri}\n"
        f"export MODELPILOT_DEFAULT_TRACKING_URI={tracking_uri}\n"
        + (f"export MODELPILOT_SERVER_IMAGE_CPU={image}\nexport MODELPILOT_SERVER_IMAGE_PULL_POLICY=Never\n"
           if image else "")
        + f"export PATH={bin_dir}:$PATH\n")
    log(f"ready: source {layout.env_file}")
    return DevEnv(cp, mlflow, tracking_uri, image)


def down(state: Path) -> None:
    operator = Layout(state).service("operator")
    for pidfile in (operator / "pids").glob("*.pid") if operator.exists() else []:
        Processes(operator).stop(pidfile.stem)
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
