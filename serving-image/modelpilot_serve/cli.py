"""`modelpilot-serve`: start the scoring server with uvicorn (uvloop + httptools where installed)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile

from .settings import from_args, parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.model_uri:
        parser().error("--model-uri (or MODELPILOT_MODEL_URI) is required")
    settings = from_args(args)
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
    import uvicorn

    uvicorn.run(
        "modelpilot_serve.app:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds), lifespan="on",
        server_header=False, date_header=False, proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
