"""`modelpilot-serve`: start the scoring server with uvicorn (uvloop + httptools where installed)."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import tempfile

from . import auth
from .settings import from_args, parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.model_uri:
        parser().error("--model-uri (or MODELPILOT_MODEL_URI) is required")
    settings = from_args(args)
    try:  # a guard that cannot work stops the server here, with the reason, instead of refusing every call
        auth.from_settings(settings.auth_mode, settings.auth_resource, settings.auth_audience,
                           settings.auth_api_keys_dir)
    except ValueError as exc:
        parser().error(str(exc))
    if not 0 <= settings.payload_log_sample_rate <= 1:
        parser().error("--payload-log-sample-rate must be between 0 and 1")
    if settings.payload_log_url and not settings.payload_log_url.startswith(("http://", "https://")):
        parser().error("--payload-log-url must be an http:// or https:// URL")
    if not 0 < settings.payload_log_cpu_share <= 1:
        parser().error("--payload-log-cpu-share must be above 0 and at most 1")
    if not settings.drift_window > 0:
        parser().error("--drift-window must be above 0 seconds")
    # Workers are separate processes built by the uvicorn factory: they read the same settings back
    # from the environment.
    os.environ.update(settings.to_env())
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="modelpilot-metrics-")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.health_port:
        # Probes get their own process (see health.py); the workers write heartbeats for it.
        health_dir = tempfile.mkdtemp(prefix="modelpilot-health-")
        os.environ["MODELPILOT_HEALTH_DIR"] = health_dir
        subprocess.Popen([sys.executable, "-m", "modelpilot_serve.health", "--host", settings.host,
                          "--port", str(settings.health_port), "--dir", health_dir, "--parent", str(os.getpid())])
    # Room for the connection cap plus files: idle connections must never starve the model of fds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = settings.max_connections + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    import uvicorn

    uvicorn.run(
        "modelpilot_serve.app:create_app", factory=True, host=settings.host, port=settings.port,
        http=_http_protocol(), timeout_keep_alive=settings.keep_alive_timeout,
        workers=settings.workers, log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds), lifespan="on",
        server_header=False, date_header=False, proxy_headers=False,
    )
    return 0


def _http_protocol() -> str:
    """Our guarded httptools protocol (header limits, header timeout, connection cap) where httptools is
    installed, as in the image; uvicorn's default otherwise."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "auto"
    return "modelpilot_serve.httpproto:GuardedHttpTools"


if __name__ == "__main__":
    sys.exit(main())
