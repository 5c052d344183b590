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

import concurrent.futures
import json
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from . import metrics
from .canary import PENDING, Verdict, analysis_window
from .canary_state import CanaryState
from .config import Settings
from .durations import format_duration
from .outbound import Outbound, read_limited, wait
from .promql import render_query, window_text
from .registry import ResolvedModel
from .spec import Analysis, DeploymentSpec
from .urls import BaseURL

log = logging.getLogger(__name__)

#: The most bytes of one Prometheus answer that are read (one number is a few hundred).
MAX_BODY_BYTES = 1 << 20

def _bin_shares(version: str) -> str:
    """Each bin's share of one version's predictions over the window, counted into stable's bins."""
    series = ('modelpilot_prediction_bin_total{namespace="$namespace",model="$model",'
              f'version="{version}",baseline="$stableVersion"}}')
    return (f"clamp_min(sum by (bin) (increase({series}[$window])) / scalar(sum(increase({series}[$window]))), "
            "0.0001)")


def prediction_drift_query() -> str:
    """PSI between the canary's and stable's predictions: both tracks count into the bins of stable's reference
    profile (the canary's pods are told stable's version), so sum((c - s) * ln(c / s)) over matching bins.
    Every bin's series exists from a pod's start, so no bin goes missing from either side."""
    canary, stable = _bin_shares("$version"), _bin_shares("$stableVersion")
    return f"sum(({canary} - {stable}) * ln({canary} / {stable}))"


_SELECTOR = 'namespace="$namespace",model="$model",version="$version"'
DEFAULT_QUERIES = {
    "requests": f"sum(increase(modelpilot_requests_total{{{_SELECTOR}}}[$window]))",
    # `or vector(0)`: with no 5xx at all the numerator has no series; that is a rate of 0, not "no data".
    "errorRate": (f'(sum(rate(modelpilot_requests_total{{{_SELECTOR},code=~"5.."}}[$window])) or vector(0))'
                  f" / sum(rate(modelpilot_requests_total{{{_SELECTOR}}}[$window]))"),
    "p99LatencyMs": ("1000 * histogram_quantile(0.99, sum by (le) "
                     f"(rate(modelpilot_request_duration_seconds_bucket{{{_SELECTOR}}}[$window])))"),
    "predictionDrift": prediction_drift_query(),
}


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered something that is not one number."""


def parse_sample(status: int, raw: bytes, promql: str) -> tuple[float | None, dict[str, str]]:
    """The one number of an instant query's answer and its labels; None for no sample or a non-finite one.

    Pure, so every shape Prometheus (or something posing as it) may answer is unit-tested: an empty
    vector, "NaN", "+Inf", two series, an error, a body that is not JSON.
    """
    try:
        body = json.loads(raw)
    except ValueError:
        raise PrometheusError(f"Prometheus answered HTTP {status} without JSON") from None
    if not isinstance(body, dict):
        raise PrometheusError(f"Prometheus answered HTTP {status} with something that is not an API answer")
    if status != 200 or body.get("status") != "success":
        kind = body.get("errorType") if isinstance(body.get("errorType"), str) else ""
        raise PrometheusError(f"Prometheus rejected the query {promql!r} (HTTP {status} {kind})".replace(" )", ")"))
    data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return None, {}
    if not isinstance(result, list) or len(result) > 1:
        count = len(result) if isinstance(result, list) else "?"
        raise PrometheusError(f"the query {promql!r} returned {count} series; it must return one number")
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusError(f"the query {promql!r} did not return a number") from None
    labels = result[0].get("metric") if isinstance(result[0], dict) else None
    labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    return (value if math.isfinite(value) else None), labels


def parse_answer(status: int, raw: bytes, promql: str) -> float | None:
    """The one number of an instant query's answer; None for no sample or a non-finite one."""
    return parse_sample(status, raw, promql)[0]


class Prometheus:
    """Instant queries against one Prometheus, over a shared aiohttp session (see `outbound`)."""

    def __init__(self, base: BaseURL, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def query(self, promql: str) -> float | None:
        return (await self.sample(promql))[0]

    async def sample(self, promql: str) -> tuple[float | None, dict[str, str]]:
        """The one sample of an instant query: its value and its labels."""
        try:
            async with self.session.get(self.base.join("/api/v1/query"), params={"query": promql},
                                        allow_redirects=False) as resp:
                raw = await read_limited(resp, MAX_BODY_BYTES)
                status = resp.status
        except TimeoutError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise PrometheusError(f"Prometheus at {self.base.origin} cannot be reached: {type(exc).__name__}") from None
        if raw is None:
            raise PrometheusError(f"Prometheus at {self.base.origin} answered more than {MAX_BODY_BYTES} bytes")
        return parse_sample(status, raw, promql)


QueryFn = Callable[[str], Awaitable[float | None]]


async def evaluate(analysis: Analysis, variables: dict[str, str], window_seconds: float, query: QueryFn,
                   subject: str = "canary") -> Verdict:
    """Run the queries and judge. Never raises for Prometheus trouble: that is "inconclusive"."""
    variables = {**variables, "window": window_text(window_seconds)}
    templates = {**DEFAULT_QUERIES, **analysis.queries}
    values: dict[str, float | None] = {}
    try:
        values["requests"] = await query(render_query(templates["requests"], variables))
        if analysis.max_error_rate is not None:
            values["errorRate"] = await query(render_query(templates["errorRate"], variables))
        if analysis.max_p99_latency_ms is not None:
            values["p99LatencyMs"] = await query(render_query(templates["p99LatencyMs"], variables))
        if analysis.max_prediction_drift is not None:
            values["predictionDrift"] = await query(render_query(templates["predictionDrift"], variables))
    except PrometheusError as exc:
        return Verdict("inconclusive", str(exc), values)
    except TimeoutError:
        return Verdict("inconclusive", f"Prometheus at {analysis.prometheus.origin} did not answer in time", values)
    return judge(analysis, values, window_seconds, subject)


def judge(analysis: Analysis, values: dict[str, float | None], window_seconds: float,
          subject: str = "canary") -> Verdict:
    """Pass, fail or inconclusive from measured values. Only finite numbers count as data."""
    window = format_duration(window_seconds)
    measured = {k: v if v is not None and math.isfinite(v) else None for k, v in values.items()}
    requests_seen = measured.get("requests")
    if requests_seen is None or requests_seen < analysis.min_requests:
        seen = "no" if not requests_seen else f"only {requests_seen:.0f}"
        return Verdict("inconclusive", f"{seen} {subject} requests in the last {window} "
                       f"(minRequests {analysis.min_requests})", measured)
    failures: list[str] = []
    checks: list[str] = []
    for key, limit, unit, fmt in (("errorRate", analysis.max_error_rate, "", "{:.4g}"),
                                  ("p99LatencyMs", analysis.max_p99_latency_ms, " ms", "{:.1f}"),
                                  ("predictionDrift", analysis.max_prediction_drift, "", "{:.3f}")):
        if limit is None:
            continue
        value = measured.get(key)
        if value is None:
            hint = (" (the predictions of both versions are compared in the bins of stable's reference profile: "
                    "stable's run needs one with predictions, see modelpilot.monitoring.log_reference)"
                    if key == "predictionDrift" else "")
            return Verdict("inconclusive", f"no {key} data for the {subject} in the last {window}{hint}", measured)
        text = f"{key} {fmt.format(value)}{unit} (max {limit:g}{unit})"
        (failures if value > limit else checks).append(text)
    summary = f"{requests_seen:.0f} requests in {window}"
    if failures:
        return Verdict("fail", f"{', '.join(failures)} over {summary}", measured)
    return Verdict("pass", f"{', '.join(checks)} over {summary}", measured)


class Analyses:
    """Runs due analyses on the `outbound` thread; a reconcile gets a verdict, or "pending"."""

    def __init__(self, outbound: Outbound, settings: Settings, on_answer: Callable[[tuple[str, str]], None]) -> None:
        self.outbound = outbound
        self.settings = settings
        self.on_answer = on_answer
        self._running: dict[tuple[str, str], concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()

    def due(self, key: tuple[str, str], spec: DeploymentSpec, previous: CanaryState | None,
            candidate: ResolvedModel | None, wall: float, stable: ResolvedModel | None = None) -> Verdict | None:
        """The verdict of the current step's analysis when one is due (None: none is due); `stable` is the
        version stable serves (the queries' $stableVersion)."""
        canary = spec.canary
        if canary is None or canary.analysis is None or candidate is None:
            return None
        if previous is None or previous.version != candidate.version:
            return None
        window = analysis_window(canary, previous, wall)
        if window is None:
            return None
        analysis = canary.analysis
        with self._lock:
            future = self._running.get(key)
        if future is None:
            variables = {"namespace": key[0], "name": key[1], "model": candidate.name, "version": candidate.version,
                         "stableVersion": stable.version if stable is not None else ""}

            async def call(session: aiohttp.ClientSession) -> Verdict:
                return await evaluate(analysis, variables, window, Prometheus(analysis.prometheus, session).query)

            def answered(done: concurrent.futures.Future[Any]) -> None:
                self.on_answer(key)

            future = self.outbound.submit(("analysis", key),
                                          analysis.prometheus.origin, self.settings.prometheus_timeout_seconds,
                                          call, answered)
            with self._lock:
                self._running[key] = future
        if not wait(future, self.settings.outbound_wait_seconds):
            return Verdict(PENDING, "the analysis is running")
        with self._lock:
            self._running.pop(key, None)
        error = future.exception()
        if error is not None:
            verdict = Verdict("inconclusive", f"Prometheus at {analysis.prometheus.origin} did not answer in time"
                              if isinstance(error, TimeoutError) else f"the analysis failed ({type(error).__name__})")
        else:
            verdict = future.result()
        metrics.ANALYSES.labels(outcome=verdict.outcome).inc()
        log.info("Analysis of %s/%s version %s: %s (%s)", *key, candidate.version, verdict.outcome, verdict.message)
        return verdict

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._running.pop(key, None)
