"""`make bench-operator`: the operator with a fleet of ModelDeployments, one table.

Setup (as in issue 11's measurements): the local control plane with kwok nodes that have room for the
pods, a real `mlflow server` with one registered model whose alias `live` every ModelDeployment
follows (refreshInterval 60 s, the default), and the operator (`modelpilot-operator -A`, defaults)
as a plain process. The operator authenticates with a ServiceAccount token so that the API server's
audit log records its every request: writes are counted there, not by the operator itself. Registry
calls are counted from the MLflow server's own access log.

For each size (default 1000; `--sizes 1000,5000`):
  0. anchor: the API server alone (no operator yet) creates N ClusterIP Services, 16 clients at a time;
  1. create N ModelDeployments in a burst; time until every one is ModelResolved=True, then Ready;
  2. steady state over `--window` seconds with nothing changing: API writes, API reads, registry
     calls, reconciles, operator CPU;
  3. move the alias in MLflow; time until every Deployment's pod template names the new version (and
     until the first one does: the refresh's share, 0 to refreshInterval after the move, by design);
  4. register the operator's webhook endpoint in MLflow (which sends `model_version_alias.created`,
     HMAC-signed), move the alias again and time the same;
  5. operator RSS;
  6. anchor: the operator stopped, the API server alone gives the N Deployments a new pod template.
While the operator acts (the burst, each alias move), the table also shows the CPU each process used and
the API server's median answer time to the operator's writes (from its audit log): what the time is made
of on this machine, where the API server, etcd, the controller-manager and the operator share the cores.
The "previous design" column is what issue 11 measured on the earlier design at 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tables import print_table  # noqa: E402  (this folder, the script's own)

from hack.controlplane import ControlPlane, ensure_binaries, kwok_node  # noqa: E402
from hack.proc import Processes, free_port, log, wait_for  # noqa: E402
from hack.services import MlflowServer  # noqa: E402

NS = "bench"
ANCHOR_NS = "anchor"
OP_NS = "modelpilot-bench-system"
SA = "operator"
MODEL = "bench-model"
MDEP = "/apis/modelpilot.dev/v1alpha1/namespaces/bench/modeldeployments"
WRITES = {"create", "update", "patch", "delete"}
WEBHOOK_SECRET = "bench-webhook-secret"
WEBHOOK_CACHE_TTL = 2
PREVIOUS_AT_1000 = {"resolved": "77 s", "ready": "234 s", "writes": "(2 applies per reconcile)",
                    "registry": "1,000+ (one per ModelDeployment)", "reconciles": "1,271", "cpu": "25 %",
                    "alias": "107 s", "rss": "97 MiB"}


def kube_client(kubeconfig: Path) -> Any:
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    from modelpilot.kube import Kube

    cfg = Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return Kube(cfg, counted=False)


def token_kubeconfig(cp: ControlPlane, path: Path) -> Path:
    cp.kubectl("create", "namespace", OP_NS)
    cp.kubectl("create", "serviceaccount", SA, "-n", OP_NS)
    cp.kubectl("create", "clusterrolebinding", "bench-operator", "--clusterrole=cluster-admin",
               f"--serviceaccount={OP_NS}:{SA}")
    token = cp.kubectl("create", "token", SA, "-n", OP_NS, "--duration", "6h").stdout.strip()
    admin = json.loads(cp.kubeconfig_path.read_text())
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))
    return path


class Audit:
    """The operator's requests, from the API server's audit log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.user = f"system:serviceaccount:{OP_NS}:{SA}"

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> dict[str, int]:
        verbs: dict[str, int] = {}
        with open(self.path, "rb") as f:
            f.seek(offset)
            for line in f:
                event = json.loads(line)
                if event.get("user", {}).get("username") == self.user and event.get("stage") == "ResponseComplete":
                    verbs[event["verb"]] = verbs.get(event["verb"], 0) + 1
        return verbs


    def latencies(self, offset: int) -> str:
        """The API server's median answer time to the operator's writes since `offset`, by verb and resource
        (the audit log's stage timestamp minus the time it received the request)."""
        took: dict[str, list[float]] = {}
        with open(self.path, "rb") as f:
            f.seek(offset)
            for line in f:
                event = json.loads(line)
                if (event.get("user", {}).get("username") != self.user or event.get("stage") != "ResponseComplete"
                        or event.get("verb") not in WRITES):
                    continue
                ref = event.get("objectRef") or {}
                what = f"{event['verb']} {ref.get('resource')}" + (f"/{ref['subresource']}" if ref.get("subresource")
                                                                    else "")
                took.setdefault(what, []).append(_seconds(event["stageTimestamp"])
                                                 - _seconds(event["requestReceivedTimestamp"]))
        medians = {k: sorted(v)[len(v) // 2] * 1000 for k, v in took.items()}
        return ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(medians.items(), key=lambda kv: -kv[1]))


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def service_anchor(cp: ControlPlane, kube: Any, n: int) -> str:
    """The API server alone, before the operator runs: `n` ClusterIP Services created by 16 parallel clients,
    as many as the create burst's first reconciles create (without a selector: no EndpointSlices follow), and
    the API server's own ClusterIP allocation time meanwhile. Kept until the end: deleting them would load
    the API server during the burst."""
    cp.kubectl("create", "namespace", ANCHOR_NS)

    def create(i: int) -> None:
        kube.request("POST", f"/api/v1/namespaces/{ANCHOR_NS}/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i:05d}"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}})

    def allocation() -> tuple[float, float]:
        text = cp.kubectl("get", "--raw", "/metrics").stdout
        values = {name: float(v) for name, v in re.findall(
            r"^kube_apiserver_clusterip_allocator_allocation_duration_seconds_(sum|count)\{[^}]*\} (\S+)$", text, re.M)}
        return values.get("sum", 0.0), values.get("count", 0.0)

    s0, c0 = allocation()
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    took = time.monotonic() - started
    s1, c1 = allocation()
    each = f"; ClusterIP allocation {(s1 - s0) / (c1 - c0) * 1000:.0f} ms on average" if c1 > c0 else ""
    return f"{took:.0f} s ({n / took:.0f} Services / s{each})"


def deployment_anchor(kube: Any, n: int) -> tuple[str, str]:
    """The API server without the operator (stopped): the fleet's Deployments get a new pod template from 16
    parallel clients, as an alias move gives them, and the controller-manager rolls them out meanwhile. One
    JSON merge patch of a pod-template annotation each: cheaper for the API server than the operator's
    server-side apply, and without its status write or Event, so this is a floor, not a like-for-like."""
    base = f"/apis/apps/v1/namespaces/{NS}/deployments"
    names = [d["metadata"]["name"] for d in kube.request("GET", base, params={
        "labelSelector": "app.kubernetes.io/managed-by=modelpilot"})["items"]]
    stamp = str(time.time())

    def patch(name: str) -> None:
        kube.request("PATCH", f"{base}/{name}", {"spec": {"template": {"metadata": {"annotations": {
            "bench.modelpilot.dev/anchor": stamp}}}}}, "application/merge-patch+json")

    before, started = component_cpu(None), time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(patch, names))
    took = time.monotonic() - started
    return f"{took:.0f} s for {len(names)} Deployments", cpu_shares(before, component_cpu(None), took)


def registry_calls(mlflow_log: Path, start: float, end: float) -> int:
    """Alias lookups MLflow logged between two wall-clock times (its log lines carry timestamps; the
    file is written with some delay, so read it a while after `end`)."""
    count = 0
    for line in mlflow_log.read_text(errors="replace").splitlines():
        if "GET /api/2.0/mlflow/registered-models/alias" not in line:
            continue
        try:
            at = time.mktime(time.strptime(line[:19], "%Y/%m/%d %H:%M:%S")) - time.timezone
        except ValueError:
            continue
        count += start <= at < end
    return count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Processes on this machine by their /proc comm (15 characters at most), as the CPU row names them.
COMPONENTS = {"kube-apiserver": "API server", "etcd": "etcd", "kube-controller": "controller-manager",
              "kube-scheduler": "scheduler", "kwok": "kwok"}


def component_cpu(operator_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by the operator (when running) and by each control-plane process."""
    used = {"operator": cpu_seconds(operator_pid)} if operator_pid is not None else {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = COMPONENTS.get((proc / "comm").read_text().strip())
            if name is not None:
                used[name] = used.get(name, 0.0) + cpu_seconds(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return used


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """Each component's CPU over an interval, one core = 100 %, busiest first."""
    shares = {k: (after.get(k, 0.0) - v) / max(seconds, 1e-3) * 100 for k, v in before.items()}
    return ", ".join(f"{k} {v:.0f} %" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def metric(port: int, name: str) -> float:
    import requests

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def conditions_true(items: list[dict[str, Any]], type_: str) -> int:
    return sum(1 for o in items if any(c.get("type") == type_ and c.get("status") == "True"
                                       for c in (o.get("status") or {}).get("conditions") or []))


def run_size(n: int, cp: ControlPlane, kube: Any, mlflow: MlflowServer, op_port: int, pid: int,
             window: float, refresh: float, webhook_url: str, burst_only: bool = False) -> dict[str, str]:
    from hack.controlplane import simulated_node_tolerations
    from hack.sample_model import register

    row: dict[str, str] = {}
    v1 = register(mlflow.url, MODEL, "live", trees=2, seed=0, features=4)
    cp.kubectl("create", "namespace", NS)

    def create(i: int) -> None:
        kube.request("POST", MDEP, {
            "apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": f"m{i:05d}", "namespace": NS},
            "spec": {"model": {"uri": f"models:/{MODEL}@live"}, "tolerations": simulated_node_tolerations()}})

    # Listing every ModelDeployment is itself load on the API server: at 5,000 poll every 2 s, not 0.5 s.
    poll = 0.5 if n <= 1000 else 2.0
    audit = Audit(cp.audit_log)
    burst_offset = audit.offset()
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    created = time.monotonic()
    log(f"{n} ModelDeployments created in {created - started:.0f}s")
    resolved_at = ready_at = None
    ready = 0
    while ready_at is None and time.monotonic() - created < 1800:
        items = kube.request("GET", MDEP)["items"]
        if resolved_at is None and conditions_true(items, "ModelResolved") == n:
            resolved_at = time.monotonic()
            if burst_only:
                break
        ready = conditions_true(items, "Ready")
        if ready == n:
            ready_at = time.monotonic()
        time.sleep(poll)
    row["resolved"] = f"{resolved_at - created:.0f} s" if resolved_at else "not within 30 min"
    row["ready"] = f"{ready_at - created:.0f} s" if ready_at else f"not measured ({ready} Ready by then)"
    row["burst-latency"] = audit.latencies(burst_offset)
    log(f"resolved after {row['resolved']}, Ready after {row['ready']}")
    if burst_only:
        row["rss"] = f"{rss_mib(pid):.0f} MiB (once resolved)"
        return row

    time.sleep(15)  # let Deployment status updates settle
    mlflow_log = mlflow.dir / "logs" / "mlflow.log"
    a0, w0 = audit.offset(), time.time()
    r0, c0 = metric(op_port, "modelpilot_reconciles_total"), cpu_seconds(pid)
    time.sleep(window)
    w1 = time.time()
    verbs = audit.since(a0)
    writes = sum(v for k, v in verbs.items() if k in WRITES)
    reads = {k: v for k, v in verbs.items() if k not in WRITES}
    minutes = window / 60
    row["writes"] = f"{writes} in {window:.0f} s"
    by_verb = ", ".join(f"{k} {v}" for k, v in sorted(reads.items()))
    row["reads"] = f"{sum(reads.values()) / minutes:.0f} / min ({by_verb})"
    row["reconciles"] = f"{(metric(op_port, 'modelpilot_reconciles_total') - r0) / minutes:.0f} / min"
    row["cpu"] = f"{(cpu_seconds(pid) - c0) / window * 100:.1f} %"
    time.sleep(5)  # MLflow's log reaches the file a little later
    row["registry"] = f"{registry_calls(mlflow_log, w0, w1)} in {window:.0f} s (refresh {refresh:.0f} s)"
    log(f"steady state: {row}")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    target = refresh + (5 if n <= 1000 else 15)
    row["alias"], row["alias-cpu"], row["alias-latency"] = move_alias(kube, client, mlflow, audit, n, poll, pid,
                                                                      seed=1, target=target)
    log(f"alias move by polling: {row['alias']}")
    client.create_webhook(name="modelpilot", url=webhook_url, secret=WEBHOOK_SECRET,
                          events=["model_version_alias.created", "model_version_alias.deleted"])
    time.sleep(WEBHOOK_CACHE_TTL + 1)  # MLflow reads who subscribes from a cache of that age
    row["webhook"], row["webhook-cpu"], row["webhook-latency"] = move_alias(kube, client, mlflow, audit, n, poll,
                                                                            pid, seed=2, target=5)
    row["rss"] = f"{rss_mib(pid):.0f} MiB"
    log(f"alias move by webhook: {row['webhook']}; RSS {row['rss']}; v1={v1}")
    return row


def move_alias(kube: Any, client: Any, mlflow: MlflowServer, audit: Audit, n: int, poll: float, pid: int, seed: int,
               target: float) -> tuple[str, str, str]:
    """Register a version, move `live` to it; the time until every Deployment's pod template names it, and
    until the first one did (what the operator took to learn of the move); and what each process used of
    the CPU from the first Deployment to the last (where the time of acting on the move goes), and how fast
    the API server answered the operator's writes meanwhile."""
    from hack.sample_model import register

    version = register(mlflow.url, MODEL, None, trees=2, seed=seed, features=4)
    offset = audit.offset()
    client.set_registered_model_alias(MODEL, "live", version)
    moved = time.monotonic()
    selector = "app.kubernetes.io/managed-by=modelpilot"
    first_at = done_at = None
    while done_at is None and time.monotonic() - moved < 600:
        deps = kube.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments",
                            params={"labelSelector": selector})["items"]
        moved_over = sum(1 for d in deps
                         if d["spec"]["template"]["metadata"]["labels"].get("modelpilot.dev/model-version") == version)
        if moved_over and first_at is None:
            first_at, cpu_first = time.monotonic(), component_cpu(pid)
        if moved_over == n:
            done_at = time.monotonic()
        time.sleep(poll)
    if done_at is None or first_at is None:
        return "not within 10 min", "-", "-"
    cpu = cpu_shares(cpu_first, component_cpu(pid), done_at - first_at)
    return (f"{done_at - moved:.0f} s (first after {first_at - moved:.0f} s; target ≤ {target:.0f} s)", cpu,
            audit.latencies(offset))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000", help="comma-separated fleet sizes (default 1000)")
    parser.add_argument("--window", type=float, default=60, help="steady-state window in seconds")
    parser.add_argument("--state", type=Path, default=REPO / ".bench" / "operator")
    parser.add_argument("--burst-only", action="store_true",
                        help="stop each size once every ModelDeployment is resolved (the burst and RSS rows only: "
                             "a quicker look at a large size; 5,000 in full takes about 30 min here)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    refresh = 60.0
    results: dict[int, dict[str, str]] = {}
    for n in sizes:
        state = args.state / str(n)
        shutil.rmtree(state, ignore_errors=True)
        cp = ControlPlane(state, ensure_binaries())
        cp.start()
        # webhooks as MLflow sends them (hack.services / README "MLflow webhooks"); none is registered until
        # the polling measurement is done
        from cryptography.fernet import Fernet

        mlflow = MlflowServer(state, env={
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_CACHE_TTL": str(WEBHOOK_CACHE_TTL)})
        procs = Processes(state / "operator")
        try:
            cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            wait_for(lambda cp=cp: cp.kubectl("get", "modeldeployments", "-A", check=False).returncode == 0, 30,
                     "the CRD")
            for i in range(n // 100 + 2):  # 110 pods each: room for every pod
                cp.kubectl("apply", "-f", "-", input=json.dumps(kwok_node(f"bench-{i}", 0)))
            anchor = service_anchor(cp, kube_client(cp.kubeconfig_path), n)
            log(f"the API server alone: {n} Services in {anchor}")
            mlflow.start()
            kubeconfig = token_kubeconfig(cp, state / "operator-kubeconfig")
            op_port, live_port, hook_port = free_port(), free_port(), free_port()
            proc = procs.start("operator", [sys.executable, "-m", "modelpilot.cli", "-A", "--metrics-port",
                                            str(op_port), "--liveness-port", str(live_port)],
                               env={"KUBECONFIG": str(kubeconfig), "MODELPILOT_DEFAULT_TRACKING_URI": mlflow.url,
                                    "MODELPILOT_WEBHOOK_PORT": str(hook_port),
                                    "MODELPILOT_WEBHOOK_SECRET": WEBHOOK_SECRET})
            wait_for(lambda port=op_port: metric(port, "modelpilot_leader") == 1, 60, "the operator")
            results[n] = run_size(n, cp, kube_client(cp.kubeconfig_path), mlflow, op_port, proc.pid,
                                  args.window, refresh, f"http://127.0.0.1:{hook_port}/webhooks/mlflow",
                                  burst_only=args.burst_only)
            results[n]["anchor"] = anchor
            procs.stop("operator")
            if args.burst_only:
                continue
            results[n]["anchor-deployments"], results[n]["anchor-deployments-cpu"] = deployment_anchor(
                kube_client(cp.kubeconfig_path), n)
            log(f"the API server alone: {results[n]['anchor-deployments']}")
        finally:
            procs.stop("operator")
            mlflow.stop()
            cp.stop()

    rows = [("create burst → all ModelResolved", "resolved", "≤ 20 s at 1,000; ≤ 90 s at 5,000"),
            ("  the API server's median answer to the operator", "burst-latency", "-"),
            ("  anchor: the API server alone creates as many Services", "anchor", "-"),
            ("create burst → all Ready", "ready", "-"),
            ("steady state: API writes", "writes", "0"),
            ("steady state: API reads", "reads", "-"),
            ("steady state: registry calls (MLflow's log)", "registry", "≤ 1 per refresh interval"),
            ("steady state: reconciles", "reconciles", "-"),
            ("steady state: operator CPU (one core = 100 %)", "cpu", "≤ 3 % at 1,000"),
            ("alias move (polling) → every Deployment", "alias", "≤ refresh + 5 s (1,000), + 15 s (5,000)"),
            ("  CPU from the first Deployment to the last", "alias-cpu", "-"),
            ("  the API server's median answer to the operator", "alias-latency", "-"),
            ("alias move (MLflow webhook) → every Deployment", "webhook", "≤ 5 s at 1,000"),
            ("  CPU from the first Deployment to the last", "webhook-cpu", "-"),
            ("  the API server's median answer to the operator", "webhook-latency", "-"),
            ("  anchor: the API server alone changes as many pod templates", "anchor-deployments", "-"),
            ("  CPU meanwhile", "anchor-deployments-cpu", "-"),
            ("operator RSS", "rss", "≤ 250 MiB at 5,000")]
    head = ["", "target", *(f"{n:,} ModelDeployments" for n in sizes), "previous design at 1,000"]
    table = [head] + [[label, target, *(results[n].get(key, "-") for n in sizes), PREVIOUS_AT_1000.get(key, "-")]
                      for label, key, target in rows]
    print_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
