"""Prometheus metrics of the operator itself (served on --metrics-port)."""

import threading
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("modelpilot_reconciles_total", "Reconciles run, by result", ["result"])
RECONCILE_SECONDS = Histogram("modelpilot_reconcile_duration_seconds", "Time spent in one reconcile")
REGISTRY_ERRORS = Counter("modelpilot_registry_errors_total", "Failed registry resolutions, by registry host "
                          "and reason", ["host", "reason"])
VERSION_CHANGES = Counter("modelpilot_version_changes_total", "Resolved versions that changed")
ROLLBACKS = Counter("modelpilot_rollbacks_total", "Canary versions rolled back (analysis failed, pods failed, "
                    "or aborted)")
PROMOTIONS = Counter("modelpilot_promotions_total", "Canary versions promoted to stable")
ANALYSES = Counter("modelpilot_canary_analyses_total", "Canary analyses run, by outcome", ["outcome"])
for _outcome in ("pass", "fail", "inconclusive"):  # every outcome's series from the start: dashboards show 0
    ANALYSES.labels(outcome=_outcome)
API_REQUESTS = Counter("modelpilot_api_requests_total",
                       "Requests the operator's reconciles sent to the Kubernetes API server, by HTTP verb "
                       "(PATCH, POST and DELETE are writes; none are expected while nothing changes)", ["verb"])
LEADER = Gauge("modelpilot_leader", "1 while this replica holds the leader lease and reconciles (always 1 "
               "without leader election)")
QUEUE_DEPTH = Gauge("modelpilot_queue_depth", "ModelDeployments waiting or being reconciled")
QUEUE_OLDEST = Gauge("modelpilot_queue_oldest_seconds", "How long the longest-waiting due ModelDeployment has "
                     "waited for a worker (0: none waiting)")
EVENTS_DROPPED = Counter("modelpilot_events_dropped_total", "Kubernetes Events not written because the queue of "
                         "Events waiting to be written was full")
EVENTS_PENDING = Gauge("modelpilot_events_pending", "Kubernetes Events queued and not written yet")
REGISTRY_CALLS = Counter("modelpilot_registry_requests_total", "Resolutions asked of a registry, by registry "
                         "(one per distinct registry, model URI and credentials per refresh interval)", ["host"])


class PerModel(Collector):
    """Gauges with one series per ModelDeployment, computed at scrape time and removed with it:
    modelpilot_model_age_seconds{namespace,name,version} (since the served version was registered),
    modelpilot_canary_weight_percent{namespace,name,version} (while a canary runs) and
    modelpilot_latency_threshold_ms{namespace,name} (spec.monitoring.latency.p99Ms)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered: dict[tuple[str, str], tuple[str, float]] = {}
        self._canary: dict[tuple[str, str], tuple[str, float]] = {}
        self._threshold: dict[tuple[str, str], float] = {}

    def set(self, namespace: str, name: str, version: str, registered_epoch: float | None) -> None:
        """The served version and its registration time (unknown: no age series)."""
        with self._lock:
            if registered_epoch is None:
                self._registered.pop((namespace, name), None)
            else:
                self._registered[namespace, name] = (version, registered_epoch)

    def set_canary(self, namespace: str, name: str, version: str | None, weight: float) -> None:
        with self._lock:
            if version is None:
                self._canary.pop((namespace, name), None)
            else:
                self._canary[namespace, name] = (version, weight)

    def set_threshold(self, namespace: str, name: str, p99_ms: float | None) -> None:
        with self._lock:
            if p99_ms is None:
                self._threshold.pop((namespace, name), None)
            else:
                self._threshold[namespace, name] = p99_ms

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            for series in (self._registered, self._canary, self._threshold):
                series.pop((namespace, name), None)

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily("modelpilot_model_age_seconds", "Seconds since the version a ModelDeployment "
                                "serves was registered in MLflow", labels=["namespace", "name", "version"])
        canary = GaugeMetricFamily("modelpilot_canary_weight_percent", "Share of requests a running canary "
                                   "version receives (mirrored share for shadow canaries)",
                                   labels=["namespace", "name", "version"])
        threshold = GaugeMetricFamily("modelpilot_latency_threshold_ms", "spec.monitoring.latency.p99Ms of a "
                                      "ModelDeployment", labels=["namespace", "name"])
        now = time.time()
        with self._lock:
            for (namespace, name), (version, epoch) in self._registered.items():
                age.add_metric([namespace, name, version], now - epoch)
            for (namespace, name), (version, weight) in self._canary.items():
                canary.add_metric([namespace, name, version], weight)
            for (namespace, name), p99 in self._threshold.items():
                threshold.add_metric([namespace, name], p99)
        yield age
        yield canary
        yield threshold


PER_MODEL = PerModel()
REGISTRY.register(PER_MODEL)
