"""Is the served version drifting? The pods' drift metrics, read from Prometheus and judged against
spec.monitoring.drift, reported as the condition `Drifting`.

The scoring server exports, per pod, `modelpilot_feature_drift{feature}` and `modelpilot_prediction_drift`
(PSI over its sliding window), `modelpilot_drift_samples` (rows in the window) and
`modelpilot_drift_profile_loaded`. Prometheus adds `namespace`; the queries select the served version by
namespace, model and version, like canary analysis. Drifting is False below `warn`, True with reason
DriftWarning from `warn`, DriftAlert from `alert` (a Warning event when it turns), and Unknown without a
reference profile (NoReferenceProfile), with fewer than `minSamples` rows (NotEnoughData) or without an
answer.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from .analysis import Prometheus, PrometheusError
from .canary import Verdict
from .checks import Run
from .driftspec import DriftSpec
from .promql import render_query

DRIFTING = "Drifting"
#: Where the profile is looked for, for messages (modelpilot_serve.drift.ARTIFACT_PATH).
PROFILE_ARTIFACT = "modelpilot/reference_profile.json"

_SELECTOR = 'namespace="$namespace",model="$model",version="$version"'
QUERIES = {
    "profile": f"min(modelpilot_drift_profile_loaded{{{_SELECTOR}}})",
    "samples": f"sum(modelpilot_drift_samples{{{_SELECTOR}}})",
    "featureDrift": f"topk(1, max by (feature) (modelpilot_feature_drift{{{_SELECTOR}}}))",
    "predictionDrift": f"max(modelpilot_prediction_drift{{{_SELECTOR}}})",
}


def drift_check(drift: DriftSpec) -> Run:
    """The check PeriodicChecks runs for spec.monitoring.drift."""

    async def run(session: aiohttp.ClientSession, variables: dict[str, str]) -> Verdict:
        prometheus = Prometheus(drift.prometheus, session)
        answers: dict[str, tuple[float | None, dict[str, str]]] = {}
        try:
            for key, template in QUERIES.items():
                answers[key] = await prometheus.sample(render_query(template, variables))
        except PrometheusError as exc:
            return Verdict("inconclusive", str(exc))
        feature, labels = answers["featureDrift"]
        return judge_drift(drift, variables["version"], answers["profile"][0], answers["samples"][0],
                           feature, labels.get("feature", "?"), answers["predictionDrift"][0])

    return run


def judge_drift(drift: DriftSpec, version: str, profile: float | None, samples: float | None,
                feature: float | None, feature_name: str, prediction: float | None) -> Verdict:
    """pass (below warn), warn, fail (from alert), unmeasured (no profile) or inconclusive. Pure."""
    values = {"samples": samples, "featureDrift": feature, "predictionDrift": prediction}
    if profile is None:
        return Verdict("inconclusive", f"no drift metrics of version {version} in Prometheus (are its pods "
                       "scraped?)", values)
    if profile < 1:
        return Verdict("unmeasured", f"version {version} has no usable reference profile, so drift is not "
                       f"measured: log one into its run with modelpilot.monitoring.log_reference (the artifact "
                       f"{PROFILE_ARTIFACT}); the pods' log says what they found", values)
    if samples is None or samples < drift.min_samples:
        seen = "no" if not samples else f"only {samples:.0f}"
        return Verdict("inconclusive", f"{seen} rows in the drift window (minSamples {drift.min_samples})", values)
    parts = [] if feature is None else [f"feature {feature_name} PSI {feature:.3f}"]
    if prediction is not None:
        parts.append(f"predictions PSI {prediction:.3f}")
    worst = max((v for v in (feature, prediction) if v is not None), default=None)
    if worst is None:
        return Verdict("inconclusive", f"no drift values of version {version} in Prometheus", values)
    text = (f"{', '.join(parts)} over {samples:.0f} rows (warn {drift.warn:g}, alert {drift.alert:g})")
    outcome = "fail" if worst >= drift.alert else "warn" if worst >= drift.warn else "pass"
    return Verdict(outcome, text, values)


def drift_condition(verdict: Verdict | None, was: dict[str, Any]) -> tuple[bool | None, str, str]:
    """(status, reason, message) of Drifting; `was` is the condition as status holds it. Until the first
    answer the held condition stands; while the reason stays, so does its message (or every check's numbers
    would rewrite the status each minute)."""
    ok: bool | None
    if verdict is None:
        if was:
            return ({"True": True, "False": False}.get(was.get("status", "")), was.get("reason", "Measuring"),
                    was.get("message", ""))
        return None, "Measuring", "asking Prometheus for the served version's drift metrics"
    ok, reason = {"pass": (False, "NoDrift"), "warn": (True, "DriftWarning"), "fail": (True, "DriftAlert"),
                  "unmeasured": (None, "NoReferenceProfile")}.get(verdict.outcome, (None, "NotEnoughData"))
    message = was.get("message", verdict.message) if was.get("reason") == reason else verdict.message
    return ok, reason, message
