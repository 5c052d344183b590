"""Server settings: command-line flags, each with a matching MODELPILOT_* environment variable.

The operator sets the environment variables on the pod; people use the flags.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    model_uri: str
    host: str = "0.0.0.0"
    port: int = 8080
    health_port: int = 8081
    workers: int = 1
    max_batch_size: int = 1024
    max_batch_delay_ms: float = 5.0
    batching_mode: str = "auto"
    max_body_bytes: int = 10 * 1024 * 1024
    max_decoded_bytes: int = 128 * 1024 * 1024
    request_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    max_connections: int = 1000
    max_in_flight: int = 256
    keep_alive_timeout: int = 5
    model_name: str = ""
    model_version: str = ""
    cache_dir: str = "/tmp/modelpilot-models"
    graceful_shutdown_seconds: float = 25.0
    log_level: str = "info"
    expose_errors: bool = False
    auth_mode: str = "none"
    auth_audience: str = "modelpilot"
    auth_resource: str = ""
    auth_api_keys_dir: str = "/var/run/modelpilot/api-keys"
    payload_log_url: str = ""
    payload_log_sample_rate: float = 1.0
    payload_log_queue: int = 1000
    payload_log_cpu_share: float = 0.03
    #: Where this server runs, for the payload log's events: the namespace and the track (stable, canary).
    namespace: str = ""
    track: str = ""
    #: Data drift: the reference profile (a file or an MLflow artifact URI; empty: the model version's run's
    #: modelpilot/reference_profile.json), the sliding window in seconds; "off" turns drift off.
    drift_profile: str = ""
    drift_window: float = 3600.0
    #: The registered version whose profile's prediction bins the predictions are also counted into (a
    #: canary counts into stable's, so the two can be compared); empty: this version's own. Its profile is
    #: found like drift_profile, or read from drift_baseline_profile.
    drift_baseline: str = ""
    drift_baseline_profile: str = ""

    def to_env(self) -> dict[str, str]:
        return {f"MODELPILOT_{k.upper()}": str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_env(cls) -> ServeSettings:
        values: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = os.environ.get(f"MODELPILOT_{name.upper()}")
            if raw is None:
                continue
            default: object = f.default
            if isinstance(default, bool):
                values[name] = _truthy(raw)
            elif isinstance(default, int | float):
                values[name] = type(default)(raw)
            else:
                values[name] = raw
        if "model_uri" not in values:
            raise SystemExit("modelpilot-serve: set --model-uri or MODELPILOT_MODEL_URI")
        return cls(**values)  # type: ignore[arg-type]


def _truthy(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _default(name: str) -> object:
    """MODELPILOT_<NAME> if set (argparse converts it with the flag's type), else the dataclass default."""
    raw = os.environ.get(f"MODELPILOT_{name.upper()}")
    return raw if raw is not None else ServeSettings.__dataclass_fields__[name].default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelpilot-serve",
        description="Serve an MLflow model over the MLflow scoring protocol and the Open Inference Protocol v2.")
    p.add_argument("--model-uri", default=os.environ.get("MODELPILOT_MODEL_URI"),
                   help="models:/NAME/VERSION (downloaded through MLFLOW_TRACKING_URI) or a local model "
                        "directory [MODELPILOT_MODEL_URI]")
    p.add_argument("--host", default=_default("host"), help="[MODELPILOT_HOST]")
    p.add_argument("--port", type=int, default=_default("port"), help="[MODELPILOT_PORT]")
    p.add_argument("--health-port", type=int, default=_default("health_port"),
                   help="port of the probe process (/v2/health/live, /v2/health/ready answered from the "
                        "workers' heartbeats, whatever load they are under); 0: none [MODELPILOT_HEALTH_PORT]")
    p.add_argument("--workers", type=int, default=_default("workers"),
                   help="server processes, each with its own copy of the model [MODELPILOT_WORKERS]")
    p.add_argument("--max-batch-size", type=int, default=_default("max_batch_size"),
                   help="most rows merged into one predict call; 1 disables batching [MODELPILOT_MAX_BATCH_SIZE]")
    p.add_argument("--max-batch-delay-ms", type=float, default=_default("max_batch_delay_ms"),
                   help="longest wait for batch-mates already being received [MODELPILOT_MAX_BATCH_DELAY_MS]")
    p.add_argument("--batching-mode", default=_default("batching_mode"), choices=["auto", "always", "off"],
                   help="merge rows of different requests: auto = only for models known to predict row by row "
                        "(scikit-learn, XGBoost, LightGBM, CatBoost, ONNX, or declared in the model's metadata); "
                        "always; off [MODELPILOT_BATCHING_MODE]")
    p.add_argument("--max-body-bytes", type=int, default=_default("max_body_bytes"),
                   help="larger request bodies get 413 [MODELPILOT_MAX_BODY_BYTES]")
    p.add_argument("--max-decoded-bytes", type=int, default=_default("max_decoded_bytes"),
                   help="a Parquet body whose columns decode to more gets 413 (compression and run-length "
                        "encoding let a small body stand for gigabytes) [MODELPILOT_MAX_DECODED_BYTES]")
    p.add_argument("--request-timeout", type=float, default=_default("request_timeout"),
                   help="seconds before a request gets 504 [MODELPILOT_REQUEST_TIMEOUT]")
    p.add_argument("--max-header-bytes", type=int, default=_default("max_header_bytes"),
                   help="request line + headers over this get 431 [MODELPILOT_MAX_HEADER_BYTES]")
    p.add_argument("--header-timeout", type=float, default=_default("header_timeout"),
                   help="seconds for a request's headers to arrive (also: a new connection's first "
                        "request); slower gets 408 [MODELPILOT_HEADER_TIMEOUT]")
    p.add_argument("--max-connections", type=int, default=_default("max_connections"),
                   help="open connections per worker; more get 503 + Retry-After [MODELPILOT_MAX_CONNECTIONS]")
    p.add_argument("--max-in-flight", type=int, default=_default("max_in_flight"),
                   help="prediction requests in progress per worker; more get 503 + Retry-After "
                        "[MODELPILOT_MAX_IN_FLIGHT]")
    p.add_argument("--keep-alive-timeout", type=int, default=_default("keep_alive_timeout"),
                   help="seconds an idle keep-alive connection stays open [MODELPILOT_KEEP_ALIVE_TIMEOUT]")
    p.add_argument("--model-name", default=_default("model_name"),
                   help="name in metrics and the v2 API (default: from the URI) [MODELPILOT_MODEL_NAME]")
    p.add_argument("--model-version", default=_default("model_version"),
                   help="version in metrics and the v2 API (default: from the URI) [MODELPILOT_MODEL_VERSION]")
    p.add_argument("--cache-dir", default=_default("cache_dir"),
                   help="where downloaded models are kept [MODELPILOT_CACHE_DIR]")
    p.add_argument("--expose-errors", action="store_true",
                   default=_truthy(str(_default("expose_errors"))),
                   help="put the model's exception text into 500 answers (development only; by default they "
                        "carry an error id and the text goes to the log) [MODELPILOT_EXPOSE_ERRORS]")
    p.add_argument("--auth-mode", default=_default("auth_mode"), choices=["none", "kubernetes", "api-key"],
                   help="who may call the model (probes and /metrics stay open) [MODELPILOT_AUTH_MODE]")
    p.add_argument("--auth-audience", default=_default("auth_audience"),
                   help="kubernetes: the audience callers' tokens are minted for [MODELPILOT_AUTH_AUDIENCE]")
    p.add_argument("--auth-resource", default=_default("auth_resource"),
                   help="kubernetes: NAMESPACE/NAME of the ModelDeployment callers need `create "
                        "modeldeployments/predict` on [MODELPILOT_AUTH_RESOURCE]")
    p.add_argument("--auth-api-keys-dir", default=_default("auth_api_keys_dir"),
                   help="api-key: a directory whose files hold the valid keys (a mounted Secret; re-read when "
                        "it changes) [MODELPILOT_AUTH_API_KEYS_DIR]")
    p.add_argument("--payload-log-url", default=_default("payload_log_url"),
                   help="send sampled requests and responses here as CloudEvents (KServe's inference logger "
                        "events); empty: off [MODELPILOT_PAYLOAD_LOG_URL]")
    p.add_argument("--payload-log-sample-rate", type=float, default=_default("payload_log_sample_rate"),
                   help="share of requests logged, 0 to 1 [MODELPILOT_PAYLOAD_LOG_SAMPLE_RATE]")
    p.add_argument("--payload-log-queue", type=int, default=_default("payload_log_queue"),
                   help="requests on their way to the sink (queued, in the pipe or in the sender process), "
                        "per worker; past it they are dropped and counted "
                        "[MODELPILOT_PAYLOAD_LOG_QUEUE]")
    p.add_argument("--drift-profile", default=_default("drift_profile"),
                   help="data drift's reference profile: a file or an MLflow artifact URI; empty: the artifact "
                        "modelpilot/reference_profile.json of the registered version's run; off: no drift "
                        "metrics [MODELPILOT_DRIFT_PROFILE]")
    p.add_argument("--drift-window", type=float, default=_default("drift_window"),
                   help="seconds of traffic the drift metrics compare with the reference [MODELPILOT_DRIFT_WINDOW]")
    p.add_argument("--drift-baseline", default=_default("drift_baseline"),
                   help="a version of the same registered model: predictions are also counted into the bins of "
                        "its profile's predictions (modelpilot_prediction_bin_total{baseline}), so this version "
                        "can be compared with it; empty: this version's own [MODELPILOT_DRIFT_BASELINE]")
    p.add_argument("--drift-baseline-profile", default=_default("drift_baseline_profile"),
                   help="the baseline's profile as a file or artifact URI, instead of its run's "
                        "[MODELPILOT_DRIFT_BASELINE_PROFILE]")
    p.add_argument("--payload-log-cpu-share", type=float, default=_default("payload_log_cpu_share"),
                   help="most CPU the payload log's sender process takes, as a share of one core; past it "
                        "the queue fills and exchanges are dropped and counted "
                        "[MODELPILOT_PAYLOAD_LOG_CPU_SHARE]")
    p.add_argument("--namespace", default=_default("namespace"), help="[MODELPILOT_NAMESPACE]")
    p.add_argument("--track", default=_default("track"), help="stable or canary [MODELPILOT_TRACK]")
    p.add_argument("--log-level", default=_default("log_level"),
                   choices=["critical", "error", "warning", "info", "debug"], help="[MODELPILOT_LOG_LEVEL]")
    return p


def from_args(args: argparse.Namespace) -> ServeSettings:
    """The settings the flags describe (flags not given fall back to the environment, then the defaults)."""
    names = ServeSettings.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names}
    values["workers"] = max(1, int(values["workers"]))
    return ServeSettings(**values)
