"""`make demo`: the product story on this machine, from nothing.

1. start the local control plane (built from source), its real node (kubelet + containerd, running the
   scoring-server image built here by buildah) and an MLflow registry (sqlite);
2. train and register `fraud-detector`, point alias `champion` at it;
3. start the operator and apply examples/modeldeployment.yaml (placed on the real node);
4. wait until it serves, show `kubectl get mdep`, and ask the Service for a prediction;
5. register a better model, move `champion` in the registry, watch the pods follow, and end with a
   prediction of the new version, fetched through the Service.

Everything keeps running afterwards (`source .dev/env; kubectl get mdep`); `make dev-down` stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests
import yaml

from hack.controlplane import ControlPlane, simulated_node_tolerations
from hack.devenv import up
from hack.layout import Layout
from hack.proc import REPO, Processes, free_port, wait_for
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

    say("Starting the local control plane, its real node and the MLflow registry")
    env = up(state)
    cp, tracking_uri = env.cp, env.tracking_uri

    def kubectl(*args: str, input: str | None = None) -> str:
        return cp.kubectl(*args, input=input).stdout

    say(f"Registering {MODEL} in MLflow and pointing alias 'champion' at it")
    first = register(tracking_uri, MODEL, "champion", trees=50, seed=0)
    print(f"{MODEL} version {first} <- champion")

    say("Starting the operator (logs: .dev/operator/logs/operator.log)")
    ops = Processes(Layout(state).service("operator"))
    ops.stop("operator")
    settings = {"KUBECONFIG": str(cp.kubeconfig_path), "MODELPILOT_DEFAULT_TRACKING_URI": tracking_uri}
    if env.image:
        settings.update(MODELPILOT_SERVER_IMAGE_CPU=env.image, MODELPILOT_SERVER_IMAGE_PULL_POLICY="Never")
    ops.start("operator", [sys.executable, "-m", "modelpilot.cli", "--all-namespaces",
                           "--liveness-port", str(free_port()), "--metrics-port", str(free_port())], env=settings)

    say("kubectl apply -f examples/modeldeployment.yaml  (as it is: it lands on the real node)")
    manifest = yaml.safe_load((REPO / "examples" / "modeldeployment.yaml").read_text())
    if not env.image:  # no real node here: only the simulated nodes can take the pods
        manifest["spec"]["tolerations"] = simulated_node_tolerations()
    print(kubectl("apply", "-f", "-", input=json.dumps(manifest)), end="")

    def ready_version() -> str | None:
        obj = json.loads(kubectl("get", "mdep", "fraud", "-o", "json"))
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return obj["status"]["model"]["version"] if conds.get("Ready") == "True" else None

    wait_for(ready_version, 300, "the ModelDeployment to become Ready (pods download and load the model)")
    print(kubectl("get", "mdep,deployment,service,pods", "-o", "wide", "-l", "modelpilot.dev/deployment=fraud"),
          end="")
    print(kubectl("get", "mdep"), end="")
    if env.image:
        predict(cp)

    say("Registering a new version and moving 'champion' to it in MLflow")
    second = register(tracking_uri, MODEL, "champion", trees=50, seed=1)
    print(f"{MODEL} version {second} <- champion; the operator re-resolves every refreshInterval (10s)")
    moved = time.monotonic()
    wait_for(lambda: ready_version() == second, 300, "the rollout of the new version")
    print(f"followed the alias in {time.monotonic() - moved:.1f}s")
    print(kubectl("get", "events", "--field-selector", "involvedObject.kind=ModelDeployment"), end="")

    say(f"Done in {time.monotonic() - started:.0f}s. Everything keeps running:")
    print(f"  source {Layout(state).env_file} && kubectl get mdep      # make dev-down stops it\n")
    print(kubectl("get", "mdep,pods", "-o", "wide"), end="")
    if env.image:
        predict(cp)
    return 0


def predict(cp: ControlPlane) -> None:
    """POST two rows to the Service's ClusterIP (kube-proxy routes it to a serving pod) and print the answer."""
    svc = json.loads(cp.kubectl("get", "service", "fraud", "-o", "json").stdout)
    url = f"http://{svc['spec']['clusterIP']}/invocations"
    # one clearly positive and one clearly negative case (the sample model's label follows f0 + f1/2)
    rows = [[2.0, 1.0] + [0.1] * 18, [-2.0, -1.0] + [0.1] * 18]
    body = {"dataframe_split": {"columns": [f"f{i}" for i in range(20)], "data": rows}}
    say(f"curl -X POST {url} -H 'Content-Type: application/json' -d '{{\"dataframe_split\": ...2 rows}}'")

    # Ready pods may be ahead of kube-proxy's rules: connection errors are retried (wait_for reports the last);
    # a tuple, so that any answer ends the wait, an error status included (a Response is falsy on 4xx/5xx)
    (resp,) = wait_for(lambda: (requests.post(url, json=body, timeout=30),), 60,
                       f"the Service at {url} to route to the serving pods (kube-proxy)")
    version = json.loads(cp.kubectl("get", "mdep", "fraud", "-o", "json").stdout)["status"]["model"]["version"]
    print(f"HTTP {resp.status_code} from the Service (version {version} serving): {resp.text}")
    if resp.status_code != 200:
        raise SystemExit("the Service did not answer with a prediction")


if __name__ == "__main__":
    sys.exit(main())
