"""Whether rows of different requests may share one predict call: only when the answer to a row cannot
depend on the other rows of the call.

Merging requests is where the throughput is, but a model that normalises by the batch (`x - mean(x)`),
ranks rows, or looks at neighbours answers differently when strangers' rows join: a silently wrong
answer. So, under the default mode `auto`, rows are merged only for

- built-in flavors whose predict is row by row: ROW_INDEPENDENT_FLAVORS (scikit-learn estimators and
  pipelines, XGBoost, LightGBM, CatBoost, ONNX graphs), or
- models that declare it in their MLmodel metadata: `mlflow.pyfunc.log_model(..., metadata=
  {"modelpilot.row_independent": True})`.

A custom pyfunc is never merged under `auto` unless it declares it. `always` merges any model whose
inputs are parsed (the operator's `spec.runtime.batching.mode: always`: the owner vouches for it);
`off` never merges.
"""

from __future__ import annotations

from typing import Any

MODES = ("auto", "always", "off")
#: Flavors whose predict maps each input row to its output row independently of the other rows.
ROW_INDEPENDENT_FLAVORS = ("sklearn", "xgboost", "lightgbm", "catboost", "onnx")
#: The MLmodel metadata key a model declares row independence with.
DECLARATION = "modelpilot.row_independent"


def may_merge(mode: str, flavors: list[str], metadata: dict[str, Any] | None) -> tuple[bool, str]:
    """(merge rows across requests?, why) for a model with these MLmodel flavors and metadata."""
    if mode not in MODES:
        raise ValueError(f"batching mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return False, "batching mode off"
    if mode == "always":
        return True, "batching mode always (the deployment vouches for row independence)"
    declared = (metadata or {}).get(DECLARATION)
    if declared is True or str(declared).lower() == "true":
        return True, f"the model declares {DECLARATION}"
    known = [f for f in flavors if f in ROW_INDEPENDENT_FLAVORS]
    if known:
        return True, f"flavor {known[0]} predicts row by row"
    return False, (f"flavors {', '.join(flavors) or 'none'} are not known to predict row by row; declare "
                   f"{DECLARATION} in the model's metadata, or set the batching mode to always")
