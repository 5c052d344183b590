"""`make demo`: the product story on this machine, from nothing.

1. start the local control plane (built from source) and an MLflow registry (sqlite);
2. train and register `fraud-detector`, point alias `champion` at it;
3. start the operator and apply examples/modeldeployment.yaml;
4. wait until it serves, show `kubectl get mdep`;
5. register a better model, move `champion` in the registry, and watch the Deployment follow.

Everything keeps running afterwards (`source .dev/env; kubectl get mdep`); `make dev-down` stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hack.devenv import REPO, Processes, free_port, up, wait_for
from hack.sample_model import register

MODEL = "fraud-detector"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", type=Path, default=REPO / ".dev")
    state = p.parse_args(argv).state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    say("Starting the local control plane and the MLflow registry")
    cp, mlflow = up(state)

    def kubectl(*args: str) -> str:
        return cp.kubectl(*args).stdout

    say(f"Registering {MODEL} in MLflow and pointing alias 'champion' at it")
    first = register(mlflow.url, MODEL, "champion", trees=50, seed=0)
    print(f"{MODEL} version {first} <- champion")

    say("Starting the operator (logs: .dev/operator/logs/operator.log)")
    ops = Processes(state / "operator")
    ops.stop("operator")
    ops.start("operator", [sys.executable, "-m", "modelpilot.cli", "--all-namespaces",
                           "--liveness-port", str(free_port()), "--metrics-port", str(free_port())],
              env={"KUBECONFIG": str(cp.kubeconfig_path), "MODELPILOT_DEFAULT_TRACKING_URI": mlflow.url})

    say("kubectl apply -f examples/modeldeployment.yaml")
    print(kubectl("apply", "-f", str(REPO / "examples" / "modeldeployment.yaml")), end="")

    def ready_version() -> str | None:
        obj = json.loads(kubectl("get", "mdep", "fraud", "-o", "json"))
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return obj["status"]["model"]["version"] if conds.get("Ready") == "True" else None

    wait_for(ready_version, 120, "the ModelDeployment to become Ready")
    print(kubectl("get", "mdep,deployment,service,pods", "-l", "modelpilot.dev/deployment=fraud"), end="")
    print(kubectl("get", "mdep"), end="")

    say("Registering a new version and moving 'champion' to it in MLflow")
    second = register(mlflow.url, MODEL, "champion", trees=50, seed=1)
    print(f"{MODEL} version {second} <- champion; the operator re-resolves every refreshInterval (10s)")
    moved = time.monotonic()
    wait_for(lambda: ready_version() == second, 120, "the rollout of the new version")
    print(f"followed the alias in {time.monotonic() - moved:.1f}s")
    print(kubectl("get", "events", "--field-selector", "involvedObject.kind=ModelDeployment"), end="")

    say(f"Done in {time.monotonic() - started:.0f}s. Everything keeps running:")
    print(f"  source {state / 'env'} && kubectl get mdep      # make dev-down stops it\n")
    print(kubectl("get", "mdep"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
