"""Register a real scikit-learn model in an MLflow registry and point an alias at it.

Used by `make demo` and by the tests, so both exercise the same thing a data scientist does:
train, log with a signature and input example, register a new version, set an alias.

    python -m hack.sample_model --name fraud-detector --alias champion [--trees 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(tracking_uri: str, name: str, alias: str | None = None, trees: int = 10, seed: int = 0,
             features: int = 20) -> str:
    """Train a RandomForest on synthetic data, log + register it, set `alias`; return the version."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    mlflow.set_tracking_uri(tracking_uri)
    rng = np.random.default_rng(seed)
    columns = [f"f{i}" for i in range(features)]
    x = pd.DataFrame(rng.normal(size=(400, features)), columns=columns)
    y = (x["f0"] + x["f1"] * 0.5 + rng.normal(scale=0.3, size=len(x)) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=trees, max_depth=6, random_state=seed).fit(x, y)
    mlflow.set_experiment(f"modelpilot-{name}")
    with mlflow.start_run():
        info: Any = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), input_example=x.head(3),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            registered_model_name=name)
    version = str(info.registered_model_version)
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def register_faulty(tracking_uri: str, name: str, alias: str | None = None, fail_share: float = 0.0,
                    delay_ms: float = 0.0, features: int = 20) -> str:
    """Register a bad new version: a model that raises for about `fail_share` of random inputs and
    sleeps `delay_ms` per call; it takes the same columns as `register`'s model. Return the version.

    For canary demos and tests: the scoring server answers its failures with HTTP 500, which is what
    a canary analysis must catch.
    """
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    class FaultyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        # Defined inside the function so cloudpickle stores it by value: the scoring server needs
        # nothing from this repository to load it.
        def __init__(self, fail_share: float, delay_ms: float) -> None:
            self.fail_share = fail_share
            self.delay_ms = delay_ms

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
            import time

            if self.delay_ms:
                time.sleep(self.delay_ms / 1000)
            # deterministic per input, about fail_share of random rows
            if ((model_input["f0"].abs() * 1000) % 1 < self.fail_share).any():
                raise RuntimeError("faulty model: this input fails (simulated bug)")
            answer: np.ndarray[Any, Any] = (model_input["f0"] > 0).astype(int).to_numpy()
            return answer

    mlflow.set_tracking_uri(tracking_uri)
    columns = [f"f{i}" for i in range(features)]
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(5, features)), columns=columns)
    model = FaultyModel(fail_share, delay_ms)
    mlflow.set_experiment(f"modelpilot-{name}")
    with mlflow.start_run():
        info: Any = mlflow.pyfunc.log_model(
            name="model", python_model=model, registered_model_name=name,
            signature=infer_signature(x, (x["f0"] > 0).astype(int).to_numpy()),
            pip_requirements=["mlflow", "pandas", "numpy"])
    version = str(info.registered_model_version)
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--name", default="fraud-detector")
    p.add_argument("--alias", default="champion")
    p.add_argument("--trees", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.tracking_uri:
        p.error("set --tracking-uri or MLFLOW_TRACKING_URI")
    version = register(args.tracking_uri, args.name, args.alias, args.trees, args.seed)
    print(f"registered {args.name} version {version}" + (f", alias {args.alias} -> {version}" if args.alias else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
