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
