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
from pathlib import Path
from typing import Any

from . import metrics
from .drift import ARTIFACT_PATH, InvalidProfile, Monitor, Profile

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


def load(setting: str, model_uri: str, window_seconds: float) -> Monitor | None:
    """A drift monitor for the model, or None (logged) when drift cannot be measured. Never raises."""
    if setting == "off":
        log.info("Drift: off (--drift-profile off)")
        return None
    try:
        location = locate(setting, model_uri)
        profile = fetch(location)
    except NoProfile as exc:
        log.info("Drift: not measured: %s", exc)
        return None
    except InvalidProfile as exc:
        log.warning("Drift: not measured: the reference profile cannot be used: %s", exc)
        return None
    except Exception as exc:  # the registry or the artifact store failed: the model still serves
        log.warning("Drift: not measured: the reference profile could not be fetched (%s: %s)",
                    type(exc).__name__, exc)
        return None
    log.info("Drift: measured against the reference profile at %s (%d features%s, window %gs)", location,
             len(profile.features), ", predictions" if profile.predictions else "", window_seconds)
    return Monitor(profile, window_seconds)


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
