"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from hack.controlplane import ControlPlane, simulated_node_tolerations
from hack.layout import Layout
from hack.proc import Processes, free_port, wait_for
from modelpilot.kube import Kube

REPO = Path(__file__).resolve().parent.parent

MDEP = ("modelpilot.dev/v1alpha1", "ModelDeployment")


class Registry:
    """Register real models the way a data scientist does (see hack/sample_model.py)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def register(self, name: str, alias: str | None = None, seed: int = 0) -> str:
        from hack.sample_model import register

        return register(self.url, name, alias, trees=5, seed=seed, features=4)

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(name, alias, version)


class Operator:
    """The real `modelpilot-operator` CLI as a subprocess, restartable."""

    def __init__(self, state: Path, kubeconfig: Path, tracking_uri: str) -> None:
        self.procs = Processes(Layout(state).service("operator"))
        self.env = {
            "KUBECONFIG": str(kubeconfig),
            "MODELPILOT_DEFAULT_TRACKING_URI": tracking_uri,
            "MODELPILOT_RETRY_BASE_SECONDS": "1",
            "MODELPILOT_REGISTRY_TIMEOUT_SECONDS": "3",
            # one "Reconciled NS/NAME" line per finished reconcile: tests prove the operator acted
            # before they assert that it changed nothing
            "MODELPILOT_LOG_LEVEL": "DEBUG",
        }
        self.liveness_port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.procs.start("operator", [
            sys.executable, "-m", "modelpilot.cli", "--all-namespaces",
            "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port),
        ], env=self.env)
        wait_for(self._live, 60, f"operator liveness endpoint\n{self.logs()}")

    def _live(self) -> bool:
        if not self.procs.alive("operator"):
            raise RuntimeError(f"operator exited:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.procs.stop("operator")

    def kill(self) -> None:
        """kill -9: no cleanup, no lease release (a node lost, an OOM kill)."""
        pid = int((self.procs.state / "pids" / "operator.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not self.procs.alive("operator"), 10, "the killed operator to be gone")

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def in_place_of(self, other: Operator) -> Iterator[Operator]:
        """Run this operator while `other` is stopped (two would both reconcile every namespace)."""
        other.stop()
        try:
            self.start()
            yield self
        finally:
            self.stop()
            other.start()

    def logs(self, lines: int = 60) -> str:
        return self.procs.log_tail("operator", lines)

    def metric(self, name: str, **labels: str) -> float:
        """A counter of the operator's /metrics (0 when the series does not exist yet)."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0

    def metric_sum(self, name: str) -> float:
        """The sum of every series of a metric (0 when there is none)."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def reconciles(self, namespace: str, name: str, offset: int = 0) -> int:
        """How many reconciles of namespace/name finished since log offset `offset`."""
        return self.logs_since(offset).count(f"Reconciled {namespace}/{name} ")

    def wait_reconciles(self, namespace: str, name: str, count: int, offset: int, timeout: float = 60) -> None:
        """Wait until `count` reconciles of namespace/name finished after `offset` (proof the operator looked)."""
        wait_for(lambda: self.reconciles(namespace, name, offset) >= count, timeout,
                 f"{count} reconciles of {namespace}/{name}\n{self.logs()}")

    def log_size(self) -> int:
        path = self.procs.state / "logs" / "operator.log"
        return path.stat().st_size if path.exists() else 0

    def logs_since(self, offset: int) -> str:
        path = self.procs.state / "logs" / "operator.log"
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


class Server:
    """A `modelpilot-serve` (or `mlflow models serve`) process on a free port."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: The probe process's address, where there is one.
        self.health_url = ""
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def wait(self, path: str = "/ping", timeout: float = 120) -> Server:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + path, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout, f"{self.url}{path}")
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def post(self, path: str, body: bytes | str, content_type: str = "application/json",
             timeout: float = 30) -> requests.Response:
        data = body.encode() if isinstance(body, str) else body
        return requests.post(self.url + path, data=data, headers={"Content-Type": content_type}, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def mdep_manifest(name: str, namespace: str, uri: str, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment whose pods land on the simulated (kwok) nodes unless `spec` says otherwise:
    those tests are about the API; tests about serving use the real node (tests/node)."""
    spec.setdefault("tolerations", simulated_node_tolerations())
    return {"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"model": {"uri": uri}, **spec}}


def apply(cp: ControlPlane, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)


def reapply(cp: ControlPlane, manifest: dict[str, Any]) -> None:
    """Apply a changed manifest (a field deleted from it is removed: kubectl's last-applied state).

    Not `kubectl replace`: a replace races the operator's status writes (409 Conflict)."""
    out = apply(cp, manifest)
    assert out.returncode == 0, out.stderr


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def get_mdep(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get(*MDEP, namespace, name)
    assert obj is not None
    return obj


def wait_reason(kube: Kube, namespace: str, name: str, type_: str, reason: str, timeout: float = 30,
                ) -> dict[str, Any]:
    """Wait until condition `type_` has `reason`; return the object."""
    return dict(wait_for(lambda: (o := kube.get(*MDEP, namespace, name)) and condition(o, type_).get("reason")
                         == reason and o, timeout, f"{type_}={reason} on {namespace}/{name}"))


class RandomTraffic:
    """An application calling a scoring server: one random row per request, until stopped; counts status codes."""

    def __init__(self, url: str, features: int, seed: int = 0, per_second: float = 25) -> None:
        self.url = url
        self.features = features
        self.seed = seed
        self.per_second = per_second
        self.codes: Counter[int] = Counter()
        #: (epoch, error) of requests that got no HTTP answer at all
        self.failures: list[tuple[float, str]] = []
        #: the first few answers of each status but 200: (epoch, start of the body)
        self.samples: dict[int, list[tuple[float, str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        columns = [f"f{i}" for i in range(self.features)]
        while not self._stop.is_set():
            body = {"dataframe_split": {"columns": columns, "data": [[rng.gauss(0, 1) for _ in columns]]}}
            try:
                resp = requests.post(self.url + "/invocations", json=body, timeout=10)
            except requests.RequestException as exc:
                self._no_answer(type(exc).__name__ + ": " + str(exc)[-160:])
            else:
                if not resp.headers.get("content-type", "").startswith("application/json"):
                    # not a scoring server's answer (they are all JSON): e.g. a ClusterIP kube-proxy had no
                    # rule for at that instant, so the request left by the default route and some proxy
                    # there answered. No pod answered: counted with the requests that got no answer.
                    self._no_answer(f"HTTP {resp.status_code} from {resp.headers.get('server')!r}, not from a "
                                    "scoring server")
                else:
                    self.codes[resp.status_code] += 1
                    if resp.status_code != 200 and len(self.samples.setdefault(resp.status_code, [])) < 3:
                        self.samples[resp.status_code].append((time.time(), resp.text[:160]))
            self._stop.wait(1 / self.per_second)

    def _no_answer(self, why: str) -> None:
        self.codes[0] += 1
        self.failures.append((time.time(), why))

    def start(self) -> RandomTraffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def report(self) -> str:
        """When requests failed and how, for an assertion message."""
        lines = [f"answers: {dict(self.codes)}"]
        lines += [f"  {code} at {t:.1f}: {text!r}" for code, seen in self.samples.items() for t, text in seen]
        if self.failures:
            lines.append(f"  no answer, first at {self.failures[0][0]:.1f}: {self.failures[0][1]}")
            lines.append(f"  no answer, last at {self.failures[-1][0]:.1f}: {self.failures[-1][1]}")
        return "\n".join(lines)

    def __enter__(self) -> RandomTraffic:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def events_for(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    body = kube.request("GET", f"/api/v1/namespaces/{namespace}/events",
                        params={"fieldSelector": f"involvedObject.name={name},involvedObject.kind=ModelDeployment"})
    return list((body or {}).get("items", []))


def wait_event(kube: Kube, namespace: str, name: str, reason: str, type_: str | None = None,
               timeout: float = 30) -> list[dict[str, Any]]:
    """The operator writes Events off the reconcile's path, right after the status they go with: poll for them,
    then return all events."""

    def seen() -> list[dict[str, Any]] | None:
        events = events_for(kube, namespace, name)
        hit = [e for e in events if e["reason"] == reason and (type_ is None or e["type"] == type_)]
        return events if hit else None

    return list(wait_for(seen, timeout, f"a {reason} event on {namespace}/{name}"))


def wait_ready(kube: Kube, namespace: str, name: str, timeout: float = 90, operator: Operator | None = None,
               version: str | None = None) -> dict[str, Any]:
    """Wait for Ready=True (serving `version`, when given) and return the object."""

    def ready() -> dict[str, Any] | None:
        obj = kube.get("modelpilot.dev/v1alpha1", "ModelDeployment", namespace, name)
        if obj is None:
            return None
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            return None  # a Ready condition about an older spec says nothing about this one
        if version is not None and (status.get("model") or {}).get("version") != version:
            return None
        return obj if condition(obj, "Ready").get("status") == "True" else None

    try:
        return dict(wait_for(ready, timeout, f"ModelDeployment {namespace}/{name} to become Ready"))
    except TimeoutError as exc:
        obj = kube.get("modelpilot.dev/v1alpha1", "ModelDeployment", namespace, name)
        detail = json.dumps((obj or {}).get("status"), indent=1)
        raise AssertionError(f"{exc}\nstatus: {detail}\n" + (operator.logs() if operator else "")) from None
