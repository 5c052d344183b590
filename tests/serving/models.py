"""Real MLflow models for the scoring-server tests, saved the way users log them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: What a custom pyfunc whose predict is row by row declares, so the scoring server may merge requests.
ROW_INDEPENDENT = {"modelpilot.row_independent": True}

COLUMNS = [f"f{i}" for i in range(5)]
#: Explicit requirements: MLflow would otherwise infer them by loading the model in a subprocess.
PYFUNC_REQUIREMENTS = ["mlflow", "pandas", "numpy"]


def training_frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=COLUMNS)


def save_sklearn(path: Path, trees: int = 10) -> Path:
    """A RandomForest saved by mlflow.sklearn (skops format with trusted types, as MLflow 3 does)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    x = training_frame()
    y = (x["f0"] + x["f1"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=trees, max_depth=5, random_state=0).fit(x, y)
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(x, model.predict(x)),
                              input_example=x.head(2), skops_trusted_types=["sklearn.tree._tree.Tree"])
    return path


def save_sklearn_proba(path: Path) -> Path:
    """A model returning a 2-column DataFrame, to check splitting of frame-shaped predictions."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Proba(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
            s = model_input["f0"] * 2.0 + model_input["f1"]
            return pd.DataFrame({"score": s, "label": (s > 0).map({True: "yes", False: "no"})})

    x = training_frame(10)
    mlflow.pyfunc.save_model(str(path), python_model=Proba(), pip_requirements=PYFUNC_REQUIREMENTS,
                             signature=infer_signature(x, Proba().predict(None, x)), input_example=x.head(2),
                             metadata=ROW_INDEPENDENT)
    return path


def save_onnx(path: Path) -> Path:
    """A LogisticRegression converted with skl2onnx and saved with mlflow.onnx."""
    import mlflow.onnx
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = training_frame().astype(np.float32)
    y = (x["f0"] - x["f2"] > 0).astype(int)
    clf = LogisticRegression().fit(x.to_numpy(), y)
    onx = to_onnx(clf, x.to_numpy()[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    feed = x.to_numpy()[:3]
    out = {"label": clf.predict(feed)}
    mlflow.onnx.save_model(onx, str(path), signature=infer_signature(feed, out), input_example=feed[:2])
    return path


def save_flaky(path: Path) -> Path:
    """Raises for rows whose f0 is 13, sleeps 1 s for rows whose f0 is 99 and FLAKY_LONG_SECONDS (default 30)
    for rows whose f0 is 77; FLAKY_LOAD_SECONDS delays loading."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class FlakyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def load_context(self, context: Any) -> None:
            time.sleep(float(os.environ.get("FLAKY_LOAD_SECONDS", "0")))

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
            if (model_input["f0"] == 13).any():
                raise RuntimeError("thirteen is unlucky")
            if (model_input["f0"] == 99).any():
                time.sleep(1.0)
            if (model_input["f0"] == 77).any():
                time.sleep(float(os.environ.get("FLAKY_LONG_SECONDS", "30")))
            return (model_input["f0"] * 10).to_numpy()

    x = training_frame(5)
    mlflow.pyfunc.save_model(str(path), python_model=FlakyModel(), pip_requirements=PYFUNC_REQUIREMENTS,
                             signature=infer_signature(x, (x["f0"] * 10).to_numpy()), metadata=ROW_INDEPENDENT)
    return path


def save_echo_params(path: Path) -> Path:
    """Answers, for each row, the `tag` param it was called with (to see which params a batch ran with)."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class EchoParams(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
            tag = (params or {}).get("tag", "none")
            return np.array([tag] * len(model_input), dtype=object)

    x = pd.DataFrame({"x": [1.0, 2.0]})
    mlflow.pyfunc.save_model(str(path), python_model=EchoParams(), pip_requirements=PYFUNC_REQUIREMENTS,
                             signature=infer_signature(x, np.array(["a", "b"]), params={"tag": "none"}),
                             metadata=ROW_INDEPENDENT)
    return path


def save_warmup_probe(path: Path) -> Path:
    """Records each predict call in the file named by WARMUP_MARKER and takes WARMUP_SECONDS for the first:
    shows whether (and when) the server warmed the model on its input example."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class WarmupProbe(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
            marker = Path(os.environ["WARMUP_MARKER"])
            first = not marker.exists()
            with marker.open("a") as f:
                f.write(f"{time.time()} {len(model_input)}\n")
            if first:
                time.sleep(float(os.environ.get("WARMUP_SECONDS", "0")))
            return (model_input["f0"] * 2).to_numpy()

    x = training_frame(3)
    mlflow.pyfunc.save_model(str(path), python_model=WarmupProbe(), pip_requirements=PYFUNC_REQUIREMENTS,
                             signature=infer_signature(x, (x["f0"] * 2).to_numpy()), input_example=x.head(2))
    return path


def save_centered(path: Path, declare: bool = False) -> Path:
    """NOT row-independent: answers x0 - mean(x0) over the rows of the call. Merging requests changes answers."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Centered(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
            x0 = model_input["x0"].to_numpy(dtype=float)
            return x0 - x0.mean()

    x = pd.DataFrame({"x0": [1.0, 2.0, 4.0]})
    mlflow.pyfunc.save_model(str(path), python_model=Centered(), pip_requirements=PYFUNC_REQUIREMENTS,
                             signature=infer_signature(x, np.array([0.0, 1.0, 2.0])),
                             metadata=ROW_INDEPENDENT if declare else None)
    return path
