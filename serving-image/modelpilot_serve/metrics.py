"""Prometheus metrics of the scoring server, labelled with the model name and version.

With several workers, PROMETHEUS_MULTIPROC_DIR (set by the CLI) makes /metrics add up all processes.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LABELS = ("model", "version")

REQUESTS = Counter("modelpilot_requests_total", "Requests served, by endpoint and HTTP status",
                   [*LABELS, "endpoint", "code"])
LATENCY = Histogram("modelpilot_request_duration_seconds", "Request latency, receipt to response",
                    [*LABELS, "endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_SIZE = Histogram("modelpilot_batch_size_rows", "Rows per predict call", LABELS,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
IN_FLIGHT = Gauge("modelpilot_requests_in_flight", "Requests being processed", LABELS,
                  multiprocess_mode="livesum")
LOAD_SECONDS = Gauge("modelpilot_model_load_seconds", "Time to fetch, load and warm the model", LABELS,
                     multiprocess_mode="max")
AUTH_FAILURES = Counter("modelpilot_auth_failures_total", "Requests refused by authentication or authorization",
                        [*LABELS, "reason"])
AUTH_REVIEWS = Counter("modelpilot_auth_reviews_total",
                       "Token reviews asked of the Kubernetes API server (answers are cached per token)", LABELS)
PAYLOAD_LOG_SENT = Counter("modelpilot_payload_log_sent_total",
                           "Sampled requests whose request and response events reached the payload-log sink", LABELS)
PAYLOAD_LOG_DROPPED = Counter("modelpilot_payload_log_dropped_total",
                              "Sampled requests not logged: the queue was full (a slow or absent sink) or the "
                              "send failed", [*LABELS, "reason"])
FEATURE_DRIFT = Gauge("modelpilot_feature_drift", "Population stability index of a feature's live values over the "
                      "drift window against the reference profile", [*LABELS, "feature"], multiprocess_mode="max")
PREDICTION_DRIFT = Gauge("modelpilot_prediction_drift", "Population stability index of the predictions over the "
                         "drift window against the reference profile's", LABELS, multiprocess_mode="max")
DRIFT_SAMPLES = Gauge("modelpilot_drift_samples", "Rows counted in the drift window", LABELS,
                      multiprocess_mode="livesum")
PREDICTION_BINS = Counter("modelpilot_prediction_bin_total", "Predictions per bin of the prediction histogram of the "
                          "`baseline` version's reference profile: two versions counted into one baseline's bins "
                          "can be compared (canary analysis' maxPredictionDrift)", [*LABELS, "baseline", "bin"])
DRIFT_PROFILE = Gauge("modelpilot_drift_profile_loaded", "1 when a reference profile is loaded and drift measured; "
                      "0 when not (the log says why)", LABELS, multiprocess_mode="min")
READY = Gauge("modelpilot_model_ready", "1 when the model is loaded and warm", LABELS, multiprocess_mode="min")


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
