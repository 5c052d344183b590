"""spec.monitoring.drift: when the served version's inputs or predictions have drifted from its training data.

The scoring server measures the population stability index (PSI) of every feature and of the predictions
over a sliding window against the version's reference profile (see modelpilot_serve.drift); these are the
thresholds the operator judges them by, and the window the pods measure over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .fields import InvalidSpec, duration, integer, obj, prometheus_url
from .urls import BaseURL

DEFAULT_WARN = 0.1
DEFAULT_ALERT = 0.25
DEFAULT_WINDOW_SECONDS = 3600.0
DEFAULT_MIN_SAMPLES = 500


@dataclass(frozen=True)
class DriftSpec:
    prometheus: BaseURL
    #: PSI from which Drifting is True with reason DriftWarning, and DriftAlert (a Warning event).
    warn: float
    alert: float
    #: The pods' sliding window, in seconds.
    window_seconds: float
    #: Fewer rows in the window is "not enough samples" (Unknown).
    min_samples: int


def parse_drift(raw: Any, settings: Settings) -> DriftSpec | None:
    if raw is None:
        return None
    drift = obj(raw, "spec.monitoring.drift")
    levels = {}
    for key, default in (("warn", DEFAULT_WARN), ("alert", DEFAULT_ALERT)):
        value = drift.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
            raise InvalidSpec(f"spec.monitoring.drift.{key} must be a number above 0 (a PSI, e.g. {default}), "
                              f"got {value!r}")
        levels[key] = float(value)
    if levels["warn"] > levels["alert"]:
        raise InvalidSpec(f"spec.monitoring.drift.warn ({levels['warn']:g}) must not be above alert "
                          f"({levels['alert']:g})")
    window = duration(drift.get("window"), "spec.monitoring.drift.window")
    if window is not None and not 60 <= window <= 7 * 86400:
        raise InvalidSpec("spec.monitoring.drift.window must be from 1m to 7d")
    return DriftSpec(
        prometheus=prometheus_url(drift.get("prometheusUrl"), "spec.monitoring.drift.prometheusUrl", settings,
                                  "the operator reads the pods' drift metrics from Prometheus"),
        warn=levels["warn"], alert=levels["alert"], window_seconds=window or DEFAULT_WINDOW_SECONDS,
        min_samples=integer(drift.get("minSamples"), "spec.monitoring.drift.minSamples", DEFAULT_MIN_SAMPLES,
                            minimum=1, maximum=10**9))
