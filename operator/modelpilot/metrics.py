"""Prometheus metrics of the operator itself (served on --metrics-port)."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("modelpilot_reconciles_total", "Reconciles run, by result", ["result"])
RECONCILE_SECONDS = Histogram("modelpilot_reconcile_duration_seconds", "Time spent in one reconcile")
REGISTRY_ERRORS = Counter("modelpilot_registry_errors_total", "Failed registry resolutions, by registry host "
                          "and reason", ["host", "reason"])
VERSION_CHANGES = Counter("modelpilot_version_changes_total", "Resolved versions that changed")
ROLLBACKS = Counter("modelpilot_rollbacks_total", "Canary versions rolled back (analysis failed, pods failed, "
                    "or aborted)")
PROMOTIONS = Counter("modelpilot_promotions_total", "Canary versions promoted to stable")
ANALYSES = Counter("modelpilot_canary_analyses_total", "Canary analyses run, by outcome", ["outcome"])
API_REQUESTS = Counter("modelpilot_api_requests_total",
                       "Requests the operator's reconciles sent to the Kubernetes API server, by HTTP verb "
                       "(PATCH, POST and DELETE are writes; none are expected while nothing changes)", ["verb"])
LEADER = Gauge("modelpilot_leader", "1 while this replica holds the leader lease and reconciles (always 1 "
               "without leader election)")
QUEUE_DEPTH = Gauge("modelpilot_queue_depth", "ModelDeployments waiting or being reconciled")
QUEUE_OLDEST = Gauge("modelpilot_queue_oldest_seconds", "How long the longest-waiting due ModelDeployment has "
                     "waited for a worker (0: none waiting)")
REGISTRY_CALLS = Counter("modelpilot_registry_requests_total", "Resolutions asked of a registry, by registry "
                         "(one per distinct registry, model URI and credentials per refresh interval)", ["host"])
