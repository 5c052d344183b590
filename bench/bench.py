"""`make bench`: modelpilot-serve against `mlflow models serve` and MLServer, side by side, one table.

One model registered in a real MLflow server (RandomForest, 50 trees x 20 features), served by:
  - `mlflow models serve` (1 worker),
  - MLServer 1.7 + mlserver-mlflow with adaptive batching (max_batch_size 32, max_batch_time 5 ms,
    inference in the server process), in its own virtualenv (.bench/mlserver-venv),
  - `modelpilot-serve` (1 worker),
  - `modelpilot-serve` (1 worker) with `--auth-mode api-key`: every request carries a key, checked
    against the keys' digests (the same per-request cost as a cached Kubernetes token answer).
  - `modelpilot-serve` (1 worker) with payload logging of every request (`--payload-log-sample-rate 1`)
    to a sink on the same machine: nginx answering 202 (where installed, as `make bench` does: a sink that
    costs little CPU, like one elsewhere in the cluster), else tests/serving/sink.py (one Python thread).
  - `modelpilot-serve` (1 worker) measuring data drift against a reference profile of the training data
    (20 features and the predictions); its cost is also measured in alternating rounds beside the plain
    server at c=32, since this VM's speed drifts by more than the 3 % target between minutes.
Each is driven by the same load generator (wrk, from Debian) with the same rows: MLflow-protocol
`dataframe_split` on POST /invocations, except MLServer, whose adaptive batching only applies to its
v2 endpoint, which gets the rows as v2 tensors. 1-row requests at concurrency 1, 8 and 32, and
100-row requests at concurrency 8.
The load generator runs on the same 2-core machine, as in the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hack.proc import free_port, wait_for  # noqa: E402
from hack.sample_model import register  # noqa: E402
from hack.services import MlflowServer  # noqa: E402

MODEL = "bench-forest"
FEATURES = 20
SCENARIOS = [("1 row", 1, 1), ("1 row", 8, 1), ("1 row", 32, 1), ("100 rows", 8, 100)]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


API_KEY = "bench-key-0123456789abcdef"
GUARDED = "modelpilot-serve (api-key auth)"
LOGGED = "modelpilot-serve (payload log, every request)"
DRIFTED = "modelpilot-serve (drift measured)"
#: Alternating c=32 rounds of the plain, the drift-measuring and the payload-logging server.
DRIFT_ROUNDS = 3


def wrk_script(path: Path, rows: int, v2: bool = False, key: str | None = None) -> Path:
    """The request body: MLflow `dataframe_split`, or (for MLServer) the same rows as v2 tensors."""
    import numpy as np

    rng = np.random.default_rng(42)
    data = np.round(rng.normal(size=(rows, FEATURES)), 4)
    columns = [f"f{i}" for i in range(FEATURES)]
    if v2:
        body = json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
            {"name": c, "shape": [rows], "datatype": "FP64", "data": data[:, i].tolist()}
            for i, c in enumerate(columns)]})
    else:
        body = json.dumps({"dataframe_split": {"columns": columns, "data": data.tolist()}})
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n' + auth +
                    f"wrk.body = [==[{body}]==]\n")
    return path


def _ms(text: str) -> float:
    """wrk's latency text in ms: 812.00us, 4.53ms, 1.20s, 1.01m; NaN for what it prints without samples."""
    found = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if found is None:
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def drive(url: str, script: Path, connections: int, seconds: int) -> Run:
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url], capture_output=True)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # the percentile lines of "Latency Distribution" (anchored: "97.50%" in the Stdev column is not one)
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    if p50 != p50 or p99 != p99:  # NaN: show what wrk printed
        print(out, file=sys.stderr)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n = int(errors.group(1)) if errors else 0
    n += sum(int(x) for x in sockerr.groups()) if sockerr else 0
    return Run(rps, p50, p99, n)


def own_predict_ms(model_dir: Path) -> tuple[float, float]:
    """Median time of the model's own pyfunc.predict (MLflow schema enforcement included)."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(model_dir))
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(FEATURES)]
    out = []
    for rows in (1, 100):
        df = pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=cols)
        model.predict(df)
        times = []
        for _ in range(100):
            t = time.perf_counter()
            model.predict(df)
            times.append((time.perf_counter() - t) * 1000)
        out.append(statistics.median(times))
    return out[0], out[1]


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        self.log = log

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


def ready(url: str, proc: Proc) -> bool:
    import requests

    if proc.proc.poll() is not None:
        raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text()[-3000:]}")
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=10, help="measured seconds per scenario")
    p.add_argument("--work", type=Path, default=REPO / ".bench")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(exist_ok=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (make bench installs it)")
    mlserver_bin = work / "mlserver-venv" / "bin" / "mlserver"
    if not mlserver_bin.exists():
        raise SystemExit(f"MLServer is needed in {mlserver_bin.parent.parent} (make bench installs it)")

    registry = MlflowServer(work / "state")
    registry.start()
    env = {"MLFLOW_TRACKING_URI": registry.url}
    os.environ.update(env)
    version = register(registry.url, MODEL, "champion", trees=50, seed=0, features=FEATURES)
    uri = f"models:/{MODEL}/{version}"
    import mlflow

    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work / f"model-{version}")))
    own1, own100 = own_predict_ms(model_dir)

    procs: list[Proc] = []
    servers: dict[str, str] = {}
    try:
        port = free_port()
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        procs.append(Proc("mlflow models serve", [str(mlflow_bin), "models", "serve", "-m", uri, "-p", str(port),
                                                  "-h", "127.0.0.1", "-w", "1", "--env-manager", "local"],
                          work / "mlflow-serve.log",
                          env={**env, "PATH": f"{mlflow_bin.parent}:{os.environ['PATH']}"}))
        servers["mlflow models serve"] = f"http://127.0.0.1:{port}"

        ms_dir = work / "mlserver"
        ms_dir.mkdir(exist_ok=True)
        port = free_port()
        (ms_dir / "settings.json").write_text(json.dumps({
            "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0,
            "debug": False, "host": "127.0.0.1"}))
        (ms_dir / "model-settings.json").write_text(json.dumps({
            "name": "forest", "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir)}, "max_batch_size": 32, "max_batch_time": 0.005}))
        procs.append(Proc("MLServer (adaptive batching)", [str(mlserver_bin), "start", str(ms_dir)],
                          work / "mlserver.log", env=env))
        servers["MLServer (adaptive batching)"] = f"http://127.0.0.1:{port}"

        port = free_port()
        serve_bin = Path(sys.executable).parent / "modelpilot-serve"
        procs.append(Proc("modelpilot-serve", [str(serve_bin), "--model-uri", uri, "--port", str(port), "--host",
                                               "127.0.0.1", "--workers", "1", "--log-level", "warning",
                                               "--health-port", str(free_port()), "--cache-dir", str(work / "cache")],
                          work / "modelpilot-serve.log", env=env))
        servers["modelpilot-serve"] = f"http://127.0.0.1:{port}"

        keys = work / "api-keys"
        keys.mkdir(exist_ok=True)
        (keys / "bench").write_text(API_KEY)
        port = free_port()
        procs.append(Proc(GUARDED, [str(serve_bin), "--model-uri", uri, "--port", str(port), "--host",
                                    "127.0.0.1", "--workers", "1", "--log-level", "warning",
                                    "--health-port", str(free_port()), "--cache-dir", str(work / "cache-guarded"),
                                    "--auth-mode", "api-key", "--auth-api-keys-dir", str(keys)],
                          work / "modelpilot-serve-guarded.log", env=env))
        servers[GUARDED] = f"http://127.0.0.1:{port}"

        sink_port = free_port()
        procs.append(payload_sink(work, sink_port))
        port = free_port()
        procs.append(Proc(LOGGED, [str(serve_bin), "--model-uri", uri, "--port", str(port), "--host",
                                   "127.0.0.1", "--workers", "1", "--log-level", "warning",
                                   "--health-port", str(free_port()), "--cache-dir", str(work / "cache-logged"),
                                   "--payload-log-url", f"http://127.0.0.1:{sink_port}/events"],
                          work / "modelpilot-serve-logged.log", env=env))
        servers[LOGGED] = f"http://127.0.0.1:{port}"

        profile = drift_profile(model_dir, work / "reference_profile.json")
        port = free_port()
        procs.append(Proc(DRIFTED, [str(serve_bin), "--model-uri", uri, "--port", str(port), "--host",
                                    "127.0.0.1", "--workers", "1", "--log-level", "warning",
                                    "--health-port", str(free_port()), "--cache-dir", str(work / "cache-drift"),
                                    "--drift-profile", str(profile)],
                          work / "modelpilot-serve-drift.log", env=env))
        servers[DRIFTED] = f"http://127.0.0.1:{port}"

        health = {"mlflow models serve": "/ping", "MLServer (adaptive batching)": "/v2/health/ready",
                  "modelpilot-serve": "/ping", GUARDED: "/ping", LOGGED: "/ping", DRIFTED: "/ping"}
        for proc in procs:
            if proc.name in servers:
                wait_for(lambda proc=proc: ready(servers[proc.name] + health[proc.name], proc), 240,
                         f"{proc.name} to be ready")

        # MLServer's adaptive batching applies to its native v2 endpoint only (its /invocations route
        # bypasses it), so it is driven there, with the same rows as v2 tensors.
        paths = {name: "/invocations" for name in servers}
        paths["MLServer (adaptive batching)"] = "/v2/models/forest/infer"
        scripts = {(rows, v2, False): wrk_script(work / f"body-{rows}{'-v2' if v2 else ''}.lua", rows, v2)
                   for rows in (1, 100) for v2 in (False, True)}
        scripts.update({(rows, False, True): wrk_script(work / f"body-{rows}-key.lua", rows, key=API_KEY)
                        for rows in (1, 100)})
        results: dict[tuple[str, int, int], Run] = {}
        own_samples = [own1]
        for name, url in servers.items():
            for _label, conc, rows in SCENARIOS:
                script = scripts[(rows, paths[name] != "/invocations", name == GUARDED)]
                run = drive(url + paths[name], script, conc, args.seconds)
                results[(name, conc, rows)] = run
                print(f"  {name:30s} {rows:3d} row(s) c={conc:<3d} {run.rps:8.1f} req/s  p50 {run.p50_ms:7.2f} ms"
                      f"  p99 {run.p99_ms:7.2f} ms  errors {run.errors}", flush=True)
            # this VM's speed drifts by a few ms between minutes: re-measure the model's own time
            own_samples.append(own_predict_ms(model_dir)[0])
        logged = payload_log_counts(servers[LOGGED])
        paired: dict[str, list[float]] = {"modelpilot-serve": [], DRIFTED: [], LOGGED: []}
        for _ in range(DRIFT_ROUNDS):
            for name in paired:
                paired[name].append(drive(servers[name] + "/invocations", scripts[(1, False, False)], 32,
                                          args.seconds).rps)
        print(f"  alternating c=32 rounds: plain {paired['modelpilot-serve']}, drift {paired[DRIFTED]}, "
              f"payload log {paired[LOGGED]}", flush=True)
        drift_rows = drift_samples(servers[DRIFTED])
    finally:
        for proc in procs:
            proc.stop()
        registry.stop()

    own1 = statistics.median(own_samples)
    print(f"\nModel: RandomForest, 50 trees x {FEATURES} features; its own pyfunc.predict takes "
          f"{own1:.2f} ms for 1 row (median of {len(own_samples)} in-process measurements between runs: "
          f"{', '.join(f'{x:.2f}' for x in own_samples)}) and {own100:.2f} ms for 100 rows.")
    print(f"Machine: {os.cpu_count()} cores; load generator wrk on the same machine; {args.seconds}s per cell.\n")
    print("| requests | conc. | server | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---:|---:|---:|---:|")
    for label, conc, rows in SCENARIOS:
        for name in servers:
            r = results[(name, conc, rows)]
            print(f"| {label} | {conc} | {name} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")
    print("\n| requests | conc. | modelpilot / mlflow serve | modelpilot / MLServer |")
    print("|---|---|---:|---:|")
    ours = "modelpilot-serve"
    for label, conc, rows in SCENARIOS:
        o = results[(ours, conc, rows)].rps
        a = results[("mlflow models serve", conc, rows)].rps
        b = results[("MLServer (adaptive batching)", conc, rows)].rps
        print(f"| {label} | {conc} | {o / a:.1f}x | {o / b:.1f}x |")

    o32 = results[(ours, 32, 1)]
    a32 = results[("mlflow models serve", 32, 1)]
    b32 = results[("MLServer (adaptive batching)", 32, 1)]
    o1 = results[(ours, 1, 1)]
    g1 = results[(GUARDED, 1, 1)]
    l32 = results[(LOGGED, 32, 1)]
    plain_rounds, drift_rounds = statistics.median(paired["modelpilot-serve"]), statistics.median(paired[DRIFTED])
    logged_rounds = statistics.median(paired[LOGGED])
    print(f"\nPayload log: {logged['sent']:.0f} requests sent to the sink ({SINK[0]}), {logged['queue_full']:.0f} "
          f"dropped (queue full), {logged['send_failed']:.0f} failed sends.")
    checks = [
        (f">= 20x mlflow serve req/s at c=32: {o32.rps / a32.rps:.1f}x", o32.rps >= 20 * a32.rps),
        (f">= 4x MLServer req/s at c=32: {o32.rps / b32.rps:.1f}x", o32.rps >= 4 * b32.rps),
        (f"lower p99 than both at c=32: {o32.p99_ms:.1f} vs {a32.p99_ms:.1f} / {b32.p99_ms:.1f} ms",
         o32.p99_ms < min(a32.p99_ms, b32.p99_ms)),
        (f"p50 at c=1 <= own predict + 1.5 ms: {o1.p50_ms:.2f} <= {own1 + 1.5:.2f} ms", o1.p50_ms <= own1 + 1.5),
        (f"auth adds <= 0.3 ms to p50 at c=1: {g1.p50_ms - o1.p50_ms:+.2f} ms ({g1.p50_ms:.2f} vs {o1.p50_ms:.2f})",
         g1.p50_ms - o1.p50_ms <= 0.3),
        (f"payload log of every request costs <= 5% req/s at c=32 (median of {DRIFT_ROUNDS} alternating rounds): "
         f"{1 - logged_rounds / plain_rounds:+.1%} ({logged_rounds:.0f} vs {plain_rounds:.0f}; in the table "
         f"{l32.rps:.0f} vs {o32.rps:.0f})", logged_rounds >= 0.95 * plain_rounds),
        (f"drift measurement costs <= 3% req/s at c=32 (median of {DRIFT_ROUNDS} alternating rounds): "
         f"{1 - drift_rounds / plain_rounds:+.1%} ({drift_rounds:.0f} vs {plain_rounds:.0f}; rows counted "
         f"{drift_rows:.0f})", drift_rounds >= 0.97 * plain_rounds and drift_rows > 0),
        (f"no failed requests for modelpilot-serve: {sum(r.errors for k, r in results.items() if k[0] == ours)}",
         all(r.errors == 0 for k, r in results.items() if k[0] in (ours, GUARDED, LOGGED, DRIFTED))),
    ]
    print("\nTargets:")
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")
    missed = [text for text, ok in checks if not ok]
    if missed:
        print(f"\n{len(missed)} target(s) missed: `make bench` fails", file=sys.stderr)
        return 1
    return 0


def payload_log_counts(url: str) -> dict[str, float]:
    """The payload log's counters from a server's /metrics."""
    import requests

    counts = {"sent": 0.0, "queue_full": 0.0, "send_failed": 0.0}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("modelpilot_payload_log_sent_total{"):
            counts["sent"] += float(line.rsplit(" ", 1)[1])
        for reason in ("queue_full", "send_failed"):
            if line.startswith("modelpilot_payload_log_dropped_total{") and f'reason="{reason}"' in line:
                counts[reason] += float(line.rsplit(" ", 1)[1])
    return counts


def drift_profile(model_dir: Path, out: Path) -> Path:
    """A reference profile of data like the training data (and of the model's predictions on it)."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    from modelpilot_serve.drift import build_profile

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(5000, FEATURES)),
                         columns=[f"f{i}" for i in range(FEATURES)])
    predictions = mlflow.pyfunc.load_model(str(model_dir)).predict(frame)
    out.write_text(json.dumps(build_profile(frame, predictions).to_dict()))
    return out


def drift_samples(url: str) -> float:
    """Rows the drift-measuring server counted in its window (proof that it measured)."""
    import requests

    return sum(float(line.rsplit(" ", 1)[1]) for line in requests.get(url + "/metrics", timeout=10).text.splitlines()
               if line.startswith("modelpilot_drift_samples{"))


#: Which payload-log sink the run used (set by payload_sink).
SINK = [""]


def payload_sink(work: Path, port: int) -> Proc:
    """nginx answering 202 to every POST where installed, else the tests' Python sink."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        SINK[0] = "tests/serving/sink.py"
        return Proc("payload-log sink", [sys.executable, "-m", "tests.serving.sink", "--port", str(port),
                                         "--out", os.devnull], work / "sink.log", cwd=REPO)
    root = work / "nginx"
    root.mkdir(exist_ok=True)
    (root / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 202; }} }}
}}
""")
    SINK[0] = "nginx, return 202"
    return Proc("payload-log sink", [nginx, "-c", str(root / "nginx.conf"), "-p", str(root)], work / "sink.log")


if __name__ == "__main__":
    sys.exit(main())
