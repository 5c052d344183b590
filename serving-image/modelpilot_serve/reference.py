"""Where data drift's reference profile comes from, and the thread that keeps the drift gauges current.

By default the profile is the artifact `modelpilot/reference_profile.json` of the run the registered
version came from (`modelpilot.monitoring.log_reference` puts it there), fetched with the same registry
credentials as the model. A model without one serves normally; `modelpilot_drift_profile_loaded` is then 0
and the log says why.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics
from .drift import ARTIFACT_PATH, Histogram, InvalidProfile, Monitor, Profile, prediction_column
from .settings import ServeSettings

log = logging.getLogger(__name__)

#: The largest profile read (a profile of 500 features with 20 bins each is about 200 KB).
MAX_PROFILE_BYTES = 8 * 2**20
#: How often the gauges are recomputed from the window.
REFRESH_SECONDS = 5.0
_PINNED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class NoProfile(Exception):
    """There is no reference profile to measure drift against; the message says why, for the log."""


def locate(setting: str, model_uri: str) -> str:
    """The profile's location: the setting, or the artifact of the registered version's run."""
    if setting:
        return setting
    match = _PINNED.match(model_uri)
    if match is None:
        raise NoProfile(f"{model_uri!r} is not a registered version (models:/NAME/VERSION), so there is no run "
                        "to find a reference profile in; pass --drift-profile")
    from mlflow import MlflowClient

    version = MlflowClient().get_model_version(match["name"], match["version"])
    if not version.run_id:
        raise NoProfile(f"version {match['version']} of {match['name']!r} was registered without a run, so it has "
                        "no reference profile")
    location = f"runs:/{version.run_id}/{ARTIFACT_PATH}"
    folder = ARTIFACT_PATH.rsplit("/", 1)[0]
    if ARTIFACT_PATH not in {a.path for a in MlflowClient().list_artifacts(version.run_id, folder)}:
        raise NoProfile(f"there is no reference profile at {location} (log one with "
                        "modelpilot.monitoring.log_reference)")
    return location


def fetch(location: str) -> Profile:
    """The profile at a local path or an MLflow artifact URI (runs:/..., s3://..., ...)."""
    path = Path(location.removeprefix("file://"))
    if location.startswith("runs:/") or ("://" in location and not location.startswith("file://")):
        import mlflow

        with tempfile.TemporaryDirectory(prefix="modelpilot-profile-") as tmp:
            return _read(Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp)), location)
    if not path.is_file():
        raise NoProfile(f"there is no reference profile file at {location}")
    return _read(path, location)


def _read(path: Path, location: str) -> Profile:
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise InvalidProfile(f"the reference profile at {location} is over {MAX_PROFILE_BYTES} bytes")
    try:
        doc: Any = json.loads(path.read_bytes())
    except ValueError as exc:
        raise InvalidProfile(f"the reference profile at {location} is not JSON: {exc}") from None
    return Profile.from_dict(doc)


def _profile(setting: str, model_uri: str, what: str) -> Profile | None:
    """The profile, or None (logged with why) when there is none to use. Never raises."""
    try:
        location = locate(setting, model_uri)
        profile = fetch(location)
    except NoProfile as exc:
        log.info("%s: not measured: %s", what, exc)
        return None
    except InvalidProfile as exc:
        log.warning("%s: not measured: the reference profile cannot be used: %s", what, exc)
        return None
    except Exception as exc:  # the registry or the artifact store failed: the model still serves
        log.warning("%s: not measured: the reference profile could not be fetched (%s: %s)", what,
                    type(exc).__name__, exc)
        return None
    log.info("%s: measured against the reference profile at %s (%d features%s)", what, location,
             len(profile.features), ", predictions" if profile.predictions else "")
    return profile


class PredictionBins:
    """Counts predictions into the bins of one version's profile's prediction histogram, as counters labelled
    with that version (`baseline`): two versions counted into the same baseline's bins can be compared in
    PromQL over any window (canary analysis' maxPredictionDrift). Every bin's series exists from the start."""

    def __init__(self, hist: Histogram, name: str, version: str, baseline: str) -> None:
        self.hist = hist
        labels = [str(i) for i in range(hist.size - 1)] + ["missing"]
        self.counters = [metrics.PREDICTION_BINS.labels(name, version, baseline, label) for label in labels]

    def observe(self, predictions: Any) -> None:
        column = prediction_column(predictions)
        if column is None:
            return
        try:
            counts = self.hist.count(column)
        except Exception:  # never in the predictions' way (the monitor logs odd batches)
            return
        self.add(counts)

    def add(self, counts: Any) -> None:
        """Add counts already made in these bins."""
        for counter, n in zip(self.counters, counts, strict=True):
            if n:
                counter.inc(int(n))


@dataclass
class Observers:
    """What watches each predicted batch: the drift monitor, the prediction bins; either may be absent."""

    monitor: Monitor | None = None
    bins: PredictionBins | None = None

    def observe(self, data: Any, predictions: Any) -> None:
        counted = self.monitor.observe(data, predictions) if self.monitor is not None else None
        if self.bins is not None:
            if counted is not None and self.monitor is not None and self.bins.hist is self.monitor.profile.predictions:
                self.bins.add(counted)  # the baseline is this version: its bins are counted already
            else:
                self.bins.observe(predictions)


def load(settings: ServeSettings, name: str, version: str) -> Observers:
    """The drift monitor (this version's profile) and the prediction bins (the baseline's profile, by default
    this version's). Never raises: what cannot be had is logged and left out."""
    if settings.drift_profile == "off":
        log.info("Drift: off (--drift-profile off)")
        return Observers()
    own = _profile(settings.drift_profile, settings.model_uri, "Drift")
    monitor = Monitor(own, settings.drift_window) if own is not None else None
    if settings.drift_baseline:
        baseline, label = _profile(settings.drift_baseline_profile, f"models:/{name}/{settings.drift_baseline}",
                                   f"Prediction bins of version {settings.drift_baseline}"), settings.drift_baseline
    else:
        baseline, label = own, version
    bins = None
    if baseline is not None and baseline.predictions is not None:
        bins = PredictionBins(baseline.predictions, name, version, label)
    return Observers(monitor, bins)


class Gauges:
    """Recomputes the drift gauges from the monitor's window every REFRESH_SECONDS, on its own thread."""

    def __init__(self, monitor: Monitor | None, name: str, version: str) -> None:
        self.monitor = monitor
        self.labels = (name, version)
        self._stop = threading.Event()
        metrics.DRIFT_PROFILE.labels(*self.labels).set(1 if monitor else 0)
        if monitor is not None:
            threading.Thread(target=self._run, name="drift-gauges", daemon=True).start()

    def refresh(self) -> None:
        if self.monitor is None:
            return
        drift = self.monitor.measure()
        metrics.DRIFT_SAMPLES.labels(*self.labels).set(drift.samples)
        for feature, value in drift.features.items():
            metrics.FEATURE_DRIFT.labels(*self.labels, feature).set(value)
        if drift.prediction is not None:
            metrics.PREDICTION_DRIFT.labels(*self.labels).set(drift.prediction)

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except Exception:
                log.exception("Drift: could not refresh the gauges")

    def stop(self) -> None:
        self._stop.set()
