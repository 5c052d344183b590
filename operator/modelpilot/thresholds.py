"""`spec.monitoring.latency`: is the served version within its p99 latency and error-rate thresholds?

The same Prometheus queries and judgement as canary analysis (`analysis.evaluate`), run for the stable
version every minute by `checks.PeriodicChecks`, and reported as the condition `LatencyWithinThreshold`:
True within the thresholds, False over one (one Warning event when it turns), Unknown without enough data
or without an answer.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from .analysis import Prometheus, evaluate
from .canary import Verdict
from .checks import Run
from .names import Owner
from .promql import promql_string, window_text
from .spec import DEFAULT_LATENCY_WINDOW_SECONDS, Analysis

LATENCY_WITHIN_THRESHOLD = "LatencyWithinThreshold"


def latency_check(latency: Analysis) -> Run:
    """The check PeriodicChecks runs for spec.monitoring.latency: canary analysis's queries, for stable."""
    window = latency.window_seconds or DEFAULT_LATENCY_WINDOW_SECONDS

    async def run(session: aiohttp.ClientSession, variables: dict[str, str]) -> Verdict:
        return await evaluate(latency, variables, window, Prometheus(latency.prometheus, session).query,
                              subject="stable version")

    return run


def latency_condition(verdict: Verdict | None, latency: Analysis, was: dict[str, Any],
                      ) -> tuple[bool | None, str, str]:
    """(status, reason, message) of LatencyWithinThreshold; `was` is the condition as status holds it.

    Until the first answer (after a restart) the held condition stands; while the judgement stays, so does
    its message, or the numbers of every check would rewrite the status each minute.
    """
    limits = ", ".join(text for text in (
        None if latency.max_p99_latency_ms is None else f"p99 at most {latency.max_p99_latency_ms:g} ms",
        None if latency.max_error_rate is None else f"error rate at most {latency.max_error_rate:g}") if text)
    ok: bool | None
    if verdict is None and was:
        ok = {"True": True, "False": False}.get(was.get("status", ""))
        reason, message = was.get("reason", "Measuring"), was.get("message", "")
    elif verdict is None:
        ok, reason, message = None, "Measuring", f"asking Prometheus whether the served version keeps {limits}"
    elif verdict.outcome == "pass":
        ok, reason, message = True, "WithinThreshold", verdict.message
    elif verdict.outcome == "fail":
        ok, reason, message = False, "ThresholdExceeded", verdict.message
    else:
        ok, reason, message = None, "NotEnoughData", verdict.message
    if verdict is not None and was.get("reason") == reason:
        message = was.get("message", message)
    return ok, reason, message


def render_prometheus_rule(owner: Owner, latency: Analysis, model: str) -> dict[str, Any]:
    """A PrometheusRule alerting on the same thresholds (where the Prometheus Operator's CRDs are served).

    It selects the model by namespace and registered name, whatever version serves, so it needs no change
    when the alias moves.
    """
    selector = f'namespace="{promql_string(owner.namespace)}",model="{promql_string(model)}"'
    window = window_text(latency.window_seconds or DEFAULT_LATENCY_WINDOW_SECONDS)
    labels = {"severity": "warning", "namespace": owner.namespace, "modelpilot_deployment": owner.name}
    rules: list[dict[str, Any]] = []
    if latency.max_p99_latency_ms is not None:
        rules.append({
            "alert": "ModelLatencyHigh",
            "expr": ("1000 * histogram_quantile(0.99, sum by (le) (rate(modelpilot_request_duration_seconds_bucket"
                     f"{{{selector}}}[{window}]))) > {latency.max_p99_latency_ms:g}"),
            "for": window,
            "labels": labels,
            "annotations": {
                "summary": f"{owner.namespace}/{owner.name}: p99 latency above {latency.max_p99_latency_ms:g} ms",
                "description": "The ModelDeployment's spec.monitoring.latency.p99Ms is exceeded "
                               "(condition LatencyWithinThreshold)."}})
    if latency.max_error_rate is not None:
        rules.append({
            "alert": "ModelErrorRateHigh",
            "expr": (f'(sum(rate(modelpilot_requests_total{{{selector},code=~"5.."}}[{window}])) or vector(0)) / '
                     f"sum(rate(modelpilot_requests_total{{{selector}}}[{window}])) > {latency.max_error_rate:g}"),
            "for": window,
            "labels": labels,
            "annotations": {
                "summary": f"{owner.namespace}/{owner.name}: error rate above {latency.max_error_rate:g}",
                "description": "The ModelDeployment's spec.monitoring.latency.errorRate is exceeded "
                               "(condition LatencyWithinThreshold)."}})
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": owner.child_metadata(owner.name),
        "spec": {"groups": [{"name": f"modelpilot.{owner.namespace}.{owner.name}", "rules": rules}]},
    }
