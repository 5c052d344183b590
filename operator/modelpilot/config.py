"""Operator settings: one object, read once from `MODELPILOT_*` environment variables.

Why environment variables: the Helm chart sets them on the operator Deployment, `make run` sets them
from `.dev/env`, and nothing else needs to be parsed. Every setting is documented where it is declared.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .durations import parse_duration

PREFIX = "MODELPILOT_"


@dataclass(frozen=True)
class Settings:
    #: Tracking server used when a ModelDeployment has no `spec.registry.trackingUri`.
    default_tracking_uri: str = ""
    #: Name of a Secret (in the ModelDeployment's namespace) with `token` or `username`/`password`,
    #: used when the ModelDeployment names none *and* uses the default tracking URI: the platform's
    #: credentials never go to a registry a tenant chose. Optional: a missing Secret of this default
    #: name means "no credentials". The values are never logged.
    default_credentials_secret: str = ""
    #: Comma-separated base URLs a spec may name in `spec.registry.trackingUri` (empty: any). An entry
    #: admits itself and every path below it; the default tracking URI is always admitted.
    allowed_registry_urls: tuple[str, ...] = ()
    #: Scoring-server image for `runtime.variant: cpu`.
    server_image_cpu: str = "ghcr.io/modelpilot/scoring-server:0.1.0"
    #: Scoring-server image for `runtime.variant: gpu` (CUDA runtime base).
    server_image_gpu: str = "ghcr.io/modelpilot/scoring-server:0.1.0-gpu"
    #: imagePullPolicy of serving containers (empty: Kubernetes' default for the tag).
    server_image_pull_policy: str = ""
    #: Comma-separated images a spec may name in `spec.runtime.image` (empty: none). An entry ending in `/`
    #: admits every repository below it, a repository admits any tag or digest of it, and an entry with a
    #: tag or digest admits exactly that image.
    allowed_images: tuple[str, ...] = ()
    #: Comma-separated Secrets (in each tenant namespace) serving pods pull images with, unless the spec
    #: sets `podTemplate.spec.imagePullSecrets`.
    server_image_pull_secrets: tuple[str, ...] = ()
    #: Default node placement of serving pods whose spec sets none: `key=value,...` and a JSON list of
    #: Kubernetes Tolerations.
    server_node_selector: tuple[tuple[str, str], ...] = ()
    server_tolerations: tuple[dict[str, Any], ...] = ()
    #: Port the scoring server listens on inside the pod; the Service exposes port 80.
    server_port: int = 8080
    #: Port of the scoring server's probe process, which answers from the workers' heartbeats however
    #: busy they are.
    server_health_port: int = 8081
    #: Where the pods' probes go: `http` (the server itself; its loop only moves bytes, so probes answer
    #: within a few hundred ms even under 10 MB bodies) or `health` (the probe process). `http` is the
    #: default while the probe process shows intermittent connection refusals on the local real node.
    server_probe_port: str = "http"
    #: Requests of serving containers whose spec sets no `resources.requests`, as `cpu=100m,memory=256Mi`
    #: (`none`: none, and such pods are BestEffort: first to be evicted).
    server_default_requests: str = "cpu=100m,memory=256Mi"
    #: Limits of serving containers whose spec sets no `resources` at all, same form (`none`: none).
    server_default_limits: str = "none"
    #: sizeLimit of the serving pods' /tmp emptyDir (downloaded model, caches): over it the pod is evicted.
    server_tmp_size_limit: str = "20Gi"
    #: ServiceAccount (in each tenant namespace) of serving pods of `spec.auth.mode: kubernetes`: allowed to
    #: create TokenReviews and SubjectAccessReviews, nothing else (the chart creates it per listed namespace).
    server_auth_service_account: str = "modelpilot-serving"
    #: Default `spec.refreshInterval` in seconds: how often aliases are re-resolved.
    default_refresh_seconds: float = 60.0
    #: Every ModelDeployment is reconciled at least this often (seconds), even when nothing told the
    #: operator that anything changed (e.g. someone edited a Service it owns).
    resync_seconds: float = 600.0
    #: Total deadline of each registry call (connect, headers, body), in seconds.
    registry_timeout_seconds: float = 10.0
    #: Calls in flight at once to one registry or Prometheus host; more wait behind them, so one
    #: slow host delays only the ModelDeployments that use it.
    outbound_per_host: int = 2
    #: How long a reconcile waits for a registry or Prometheus answer before it moves on (the answer
    #: re-enqueues it when it comes).
    outbound_wait_seconds: float = 1.0
    #: First retry delay after a transient registry failure; doubles up to the refresh interval.
    retry_base_seconds: float = 2.0
    #: Prometheus queried by canary analysis when `spec.canary.analysis.prometheusUrl` is not set.
    default_prometheus_url: str = ""
    #: Total deadline of each Prometheus query, in seconds.
    prometheus_timeout_seconds: float = 10.0
    #: Reconciles that may run at once (they mostly wait on HTTP).
    reconcile_workers: int = 32
    #: Cluster DNS domain used in `status.url`.
    cluster_domain: str = "cluster.local"
    #: Name the operator writes with (server-side apply field manager, event source).
    field_manager: str = "modelpilot"
    #: Port of the MLflow webhook endpoint (POST /webhooks/mlflow); 0: off.
    webhook_port: int = 0
    #: The HMAC secret MLflow signs webhooks with (chart: from a Secret). Required with webhook_port.
    webhook_secret: str = field(default="", repr=False)
    #: Only the replica holding a coordination.k8s.io Lease reconciles (run two or more replicas).
    leader_election: bool = False
    #: The Lease's name, and its namespace (empty: the pod's own namespace).
    leader_election_id: str = "modelpilot-leader"
    leader_election_namespace: str = ""
    #: A standby takes over when the lease has not been renewed for this long.
    lease_duration_seconds: float = 15.0
    #: A leader that cannot renew for this long stops (and restarts as a standby).
    renew_deadline_seconds: float = 10.0
    #: How often the leader renews and a standby tries to acquire.
    retry_period_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.name == "default_refresh_seconds":
                values[f.name] = parse_duration(raw)
            elif f.name == "server_node_selector":
                pairs = (item.partition("=") for item in raw.split(",") if item.strip())
                values[f.name] = tuple((k.strip(), v.strip()) for k, sep, v in pairs if sep and k.strip())
            elif f.name == "server_tolerations":
                values[f.name] = _tolerations(raw)
            elif str(f.type).startswith("tuple"):
                values[f.name] = tuple(u.strip() for u in raw.split(",") if u.strip())
            elif f.type in ("bool", bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        return cls(**values)

    def env_names(self) -> list[str]:
        return [PREFIX + f.name.upper() for f in fields(self)]


def _tolerations(raw: str) -> tuple[dict[str, Any], ...]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"MODELPILOT_SERVER_TOLERATIONS must be a JSON list of tolerations: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("MODELPILOT_SERVER_TOLERATIONS must be a JSON list of tolerations")
    return tuple(value)
