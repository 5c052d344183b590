"""Canary analysis: ask Prometheus how the canary version behaves, and judge it against the spec.

The scoring server exports `modelpilot_requests_total{model,version,endpoint,code}` and
`modelpilot_request_duration_seconds{model,version,endpoint}`; Prometheus adds `namespace` when it
discovers the pods (ServiceMonitor/PodMonitor or kubernetes_sd). The default queries select the
canary by namespace, model name and version, so they need no knowledge of pod names or of how
Prometheus was set up. Every query can be overridden in `spec.canary.analysis.queries`; templates
may use $namespace, $name (the ModelDeployment), $model, $version and $window.

Missing data is never a pass: no Prometheus, no series, NaN (0/0) or fewer than `minRequests`
requests all give an "inconclusive" verdict, on which the rollout waits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from string import Template

import requests

from .canary import Verdict
from .durations import format_duration
from .spec import Analysis

_SELECTOR = 'namespace="$namespace",model="$model",version="$version"'
DEFAULT_QUERIES = {
    "requests": f"sum(increase(modelpilot_requests_total{{{_SELECTOR}}}[$window]))",
    # `or vector(0)`: with no 5xx at all the numerator has no series; that is a rate of 0, not "no data".
    "errorRate": (f'(sum(rate(modelpilot_requests_total{{{_SELECTOR},code=~"5.."}}[$window])) or vector(0))'
                  f" / sum(rate(modelpilot_requests_total{{{_SELECTOR}}}[$window]))"),
    "p99LatencyMs": ("1000 * histogram_quantile(0.99, sum by (le) "
                     f"(rate(modelpilot_request_duration_seconds_bucket{{{_SELECTOR}}}[$window])))"),
}


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered something that is not one number."""


def promql_string(value: str) -> str:
    """`value` safe inside a double-quoted PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_query(template: str, variables: dict[str, str]) -> str:
    return Template(template).safe_substitute({k: promql_string(v) for k, v in variables.items()})


def window_text(seconds: float) -> str:
    """A PromQL range: whole seconds, at least 1."""
    return f"{max(1, round(seconds))}s"


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The value of an instant query that returns one sample; None for no sample or NaN."""
        try:
            resp = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusError(f"Prometheus at {self.url} cannot be reached: {type(exc).__name__}") from exc
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {resp.status_code} without JSON") from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected the query {promql!r}: "
                                  f"{body.get('errorType', resp.status_code)}: {body.get('error', '')}".strip())
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar":
            result = [{"value": result}]
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"the query {promql!r} returned {len(result)} series; it must return one number")
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise PrometheusError(f"the query {promql!r} did not return a number") from None
        return None if math.isnan(value) else value


QueryFn = Callable[[str], float | None]


def evaluate(analysis: Analysis, variables: dict[str, str], window_seconds: float, query: QueryFn) -> Verdict:
    """Run the queries and judge. Never raises for Prometheus trouble: that is "inconclusive"."""
    variables = {**variables, "window": window_text(window_seconds)}
    templates = {**DEFAULT_QUERIES, **analysis.queries}
    window = format_duration(window_seconds)
    values: dict[str, float | None] = {}
    try:
        values["requests"] = query(render_query(templates["requests"], variables))
        if analysis.max_error_rate is not None:
            values["errorRate"] = query(render_query(templates["errorRate"], variables))
        if analysis.max_p99_latency_ms is not None:
            values["p99LatencyMs"] = query(render_query(templates["p99LatencyMs"], variables))
    except PrometheusError as exc:
        return Verdict("inconclusive", str(exc), values)

    requests_seen = values["requests"]
    if requests_seen is None or requests_seen < analysis.min_requests:
        seen = "no" if not requests_seen else f"only {requests_seen:.0f}"
        return Verdict("inconclusive", f"{seen} canary requests in the last {window} "
                       f"(minRequests {analysis.min_requests})", values)
    failures: list[str] = []
    checks: list[str] = []
    for key, limit, unit, fmt in (("errorRate", analysis.max_error_rate, "", "{:.4g}"),
                                  ("p99LatencyMs", analysis.max_p99_latency_ms, " ms", "{:.1f}")):
        if limit is None:
            continue
        value = values.get(key)
        if value is None:
            return Verdict("inconclusive", f"no {key} data for the canary in the last {window}", values)
        text = f"{key} {fmt.format(value)}{unit} (max {limit:g}{unit})"
        (failures if value > limit else checks).append(text)
    summary = f"{requests_seen:.0f} requests in {window}"
    if failures:
        return Verdict("fail", f"{', '.join(failures)} over {summary}", values)
    return Verdict("pass", f"{', '.join(checks)} over {summary}", values)
