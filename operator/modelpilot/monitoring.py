"""Helpers for data scientists: `log_reference` stores a model's reference profile for data drift.

    from modelpilot.monitoring import log_reference

    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model", registered_model_name="fraud-detector", ...)
        log_reference(x_train, run.info.run_id, predictions=model.predict(x_train))

The profile (per-feature bins with their training frequencies, and the predictions') goes to the run's
artifacts as `modelpilot/reference_profile.json`; every version registered from that run is then served
with drift metrics (`modelpilot_feature_drift`, `modelpilot_prediction_drift`). It can be added to the run
of a version registered earlier: the scoring server reads it when it next loads that version.

The bins are made by the scoring server's own code (`modelpilot_serve.drift`), so the profile and the live
counts can never disagree about where a value falls: install `modelpilot-serve` next to this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["log_reference"]


def log_reference(data: Any, run_id: str, predictions: Any = None, bins: int = 10, top_k: int = 20) -> str:
    """Log the reference profile of `data` (a pandas DataFrame with the model's input columns) and, if given,
    of the model's `predictions` on it, to the run `run_id` of the current tracking server. Returns the
    profile's artifact URI. Numeric columns get `bins` quantile bins, others their `top_k` most frequent
    values plus "other"; missing values are counted apart."""
    try:
        from modelpilot_serve.drift import ARTIFACT_PATH, build_profile
    except ImportError as exc:  # pragma: no cover - the dev environment has both
        raise ImportError("log_reference needs the modelpilot-serve package (the scoring server's own binning): "
                          "pip install modelpilot-serve") from exc
    import mlflow

    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be the id of the MLflow run the model was logged in")
    profile = build_profile(data, predictions, bins=bins, top_k=top_k)
    mlflow.MlflowClient().log_dict(run_id, profile.to_dict(), ARTIFACT_PATH)
    return f"runs:/{run_id}/{ARTIFACT_PATH}"
