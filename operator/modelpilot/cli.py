"""`modelpilot-operator`: run the operator (what the chart's Deployment and `make run` start)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelpilot-operator",
        description="Serve MLflow registry models on Kubernetes and follow their aliases.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=None, metavar="NS",
                       help="watch only this namespace (repeatable; glob patterns allowed); "
                            "env MODELPILOT_NAMESPACES (comma-separated)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch ModelDeployments in every namespace (the default)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--log-level", default=os.environ.get("MODELPILOT_LOG_LEVEL", ""),
                   choices=["", "DEBUG", "INFO", "WARNING", "ERROR"],
                   help="level of the operator's own log lines (DEBUG adds one line per reconcile); "
                        "env MODELPILOT_LOG_LEVEL; default INFO (WARNING with --quiet)")
    p.add_argument("--liveness-port", type=int, default=int(os.environ.get("MODELPILOT_LIVENESS_PORT", 8081)),
                   help="serve /healthz on this port (0: off; default 8081)")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("MODELPILOT_METRICS_PORT", 9090)),
                   help="serve Prometheus /metrics on this port (0: off; default 9090)")
    p.add_argument("--version", action="version", version=f"modelpilot {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import kopf
    from prometheus_client import start_http_server

    from . import handlers  # noqa: F401 - registers the handlers

    namespaces = args.namespace
    if namespaces is None and not args.all_namespaces and os.environ.get("MODELPILOT_NAMESPACES"):
        namespaces = [n.strip() for n in os.environ["MODELPILOT_NAMESPACES"].split(",") if n.strip()]
    kopf.configure(verbose=args.verbose >= 1, debug=args.verbose >= 2, quiet=args.quiet)
    level = args.log_level or ("WARNING" if args.quiet else "INFO")
    logging.getLogger("modelpilot").setLevel(getattr(logging, level))
    if not args.verbose:
        # kopf logs every handler call at INFO; ours only enqueue, so that is noise, not news
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        asyncio.run(kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            standalone=True,
            liveness_endpoint=liveness,
        ))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
