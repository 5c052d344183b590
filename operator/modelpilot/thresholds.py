"""`spec.monitoring.latency`: is the served version within its p99 latency and error-rate thresholds?

The same Prometheus queries and judgement as canary analysis (`analysis.evaluate`), run for the stable
version every `CHECK_SECONDS` on the outbound thread (one slow Prometheus delays only the models that
use it), and reported as the condition `LatencyWithinThreshold`: True within the thresholds, False
over one (one Warning event when it turns), Unknown without enough data or without an answer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from .analysis import Prometheus, evaluate
from .canary import Verdict
from .config import Settings
from .names import Owner
from .outbound import Outbound
from .promql import promql_string, window_text
from .registry import ResolvedModel
from .spec import DEFAULT_LATENCY_WINDOW_SECONDS, Analysis

log = logging.getLogger(__name__)

LATENCY_WITHIN_THRESHOLD = "LatencyWithinThreshold"
#: How often each ModelDeployment's thresholds are checked.
CHECK_SECONDS = 60.0


@dataclass(frozen=True)
class Measured:
    version: str
    latency: Analysis
    verdict: Verdict
    at: float


class Thresholds:
    """The latest judgement per ModelDeployment, refreshed every CHECK_SECONDS in the background."""

    def __init__(self, outbound: Outbound, settings: Settings, on_answer: Callable[[tuple[str, str]], None]) -> None:
        self.outbound = outbound
        self.settings = settings
        self.on_answer = on_answer
        self._last: dict[tuple[str, str], Measured] = {}
        self._asked: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def latest(self, key: tuple[str, str], latency: Analysis | None, serving: ResolvedModel | None,
               wall: float) -> tuple[Verdict | None, float | None]:
        """(the latest verdict for the version now served or None, seconds until the next check)."""
        if latency is None or serving is None:
            self.forget(key)
            return None, None
        with self._lock:
            last = self._last.get(key)
            asked = self._asked.get(key)
        # a judgement of another version, or against other thresholds, says nothing about this one
        current = last if last is not None and (last.version, last.latency) == (serving.version, latency) else None
        if asked is None and (current is None or wall - current.at >= CHECK_SECONDS):
            self._ask(key, latency, serving, wall)
        next_check = CHECK_SECONDS if current is None else max(CHECK_SECONDS - (wall - current.at), 1.0)
        return (current.verdict if current else None), next_check

    def _ask(self, key: tuple[str, str], latency: Analysis, serving: ResolvedModel, wall: float) -> None:
        variables = {"namespace": key[0], "name": key[1], "model": serving.name, "version": serving.version}
        window = latency.window_seconds or DEFAULT_LATENCY_WINDOW_SECONDS

        async def call(session: aiohttp.ClientSession) -> Verdict:
            return await evaluate(latency, variables, window, Prometheus(latency.prometheus, session).query,
                                  subject="stable version")

        def answered(done: concurrent.futures.Future[Any]) -> None:
            if done.cancelled():  # the operator is stopping
                return
            error = done.exception()
            verdict = done.result() if error is None else Verdict(
                "inconclusive", f"Prometheus at {latency.prometheus.origin} did not answer in time"
                if isinstance(error, TimeoutError) else f"the check failed ({type(error).__name__})")
            with self._lock:
                if self._asked.pop(key, None) is None:
                    return  # forgotten meanwhile
                self._last[key] = Measured(serving.version, latency, verdict, wall)
            log.info("Thresholds of %s/%s version %s: %s (%s)", *key, serving.version, verdict.outcome,
                     verdict.message)
            self.on_answer(key)

        with self._lock:
            self._asked[key] = wall
        self.outbound.submit(("thresholds", key), latency.prometheus.origin, self.settings.prometheus_timeout_seconds,
                             call, answered)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._asked.pop(key, None)


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
