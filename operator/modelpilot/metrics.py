"""Prometheus metrics of the operator itself (served on --metrics-port)."""

from prometheus_client import Counter, Histogram

RECONCILES = Counter("modelpilot_reconciles_total", "Reconciles run, by result", ["result"])
RECONCILE_SECONDS = Histogram("modelpilot_reconcile_duration_seconds", "Time spent in one reconcile")
REGISTRY_ERRORS = Counter("modelpilot_registry_errors_total", "Failed registry resolutions, by reason",
                          ["reason"])
VERSION_CHANGES = Counter("modelpilot_version_changes_total", "Resolved versions that changed")
#: Canary rollbacks. Declared now so alerting rules (the chart's PrometheusRule) refer to a real series;
#: it stays 0 until progressive rollouts land.
ROLLBACKS = Counter("modelpilot_rollbacks_total", "Canary versions rolled back")
