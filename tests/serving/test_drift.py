"""Data drift on a real server process over real HTTP: with a reference profile (a file, or the run
artifact `modelpilot.monitoring.log_reference` writes into a real MLflow) the server exports each feature's
and the predictions' PSI; without a usable one it serves normally and says drift is not measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from hack.proc import wait_for
from modelpilot.monitoring import log_reference
from modelpilot_serve.drift import build_profile
from tests.helpers import Registry
from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS, training_frame
from tests.serving.test_payload_log import metric


def send(server: Server, data: pd.DataFrame, rows_per_request: int = 20) -> None:
    with requests.Session() as client:
        for start in range(0, len(data), rows_per_request):
            part = data.iloc[start:start + rows_per_request]
            resp = client.post(server.url + "/invocations", timeout=10,
                               json={"dataframe_split": {"columns": COLUMNS, "data": part.to_numpy().tolist()}})
            assert resp.status_code == 200, resp.text


def drift(server: Server, feature: str) -> float:
    return metric(server, "modelpilot_feature_drift", f'feature="{feature}"')


def profile_loaded(server: Server) -> float:
    """modelpilot_drift_profile_loaded, once the server has looked for the profile (after it turned ready)."""
    wait_for(lambda: "modelpilot_drift_profile_loaded{" in requests.get(server.url + "/metrics", timeout=5).text,
             30, "the server to look for its reference profile")
    return metric(server, "modelpilot_drift_profile_loaded")


def predictions(data: pd.DataFrame) -> np.ndarray:
    return ((data["f0"] + data["f1"]) > 0).astype(int).to_numpy()  # what the test model learnt


def test_live_traffic_like_the_reference_drifts_little_and_a_shifted_feature_a_lot(
        start_server: StartServer, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    reference = training_frame(2000, seed=0)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(build_profile(reference, predictions(reference)).to_dict()))
    server = start_server(model_dirs["sklearn"], "--drift-profile", str(profile), "--drift-window", "300")
    assert profile_loaded(server) == 1
    send(server, training_frame(600, seed=1))
    wait_for(lambda: metric(server, "modelpilot_drift_samples") == 600, 20, "600 rows counted")
    assert all(drift(server, f) < 0.1 for f in COLUMNS), [drift(server, f) for f in COLUMNS]
    assert metric(server, "modelpilot_prediction_drift") < 0.1
    shifted = training_frame(1200, seed=2)
    shifted["f0"] += 3  # one feature moves; the model now mostly predicts 1
    send(server, shifted)
    wait_for(lambda: metric(server, "modelpilot_drift_samples") == 1800, 20, "1,800 rows counted")
    assert drift(server, "f0") > 0.25
    assert all(drift(server, f) < 0.1 for f in COLUMNS[1:]), [drift(server, f) for f in COLUMNS]
    assert metric(server, "modelpilot_prediction_drift") > 0.1


@pytest.mark.parametrize("profile", ["missing", "not-json", "wrong-format"])
def test_without_a_usable_profile_the_model_serves_and_drift_is_not_measured(
        start_server: StartServer, model_dirs: dict[str, Path], tmp_path: Path, profile: str) -> None:
    path = tmp_path / "profile.json"
    if profile == "not-json":
        path.write_text("{nope")
    elif profile == "wrong-format":
        path.write_text(json.dumps({"format": "something/else", "features": []}))
    server = start_server(model_dirs["sklearn"], "--drift-profile", str(path), "--log-level", "info")
    send(server, training_frame(40, seed=1))
    assert profile_loaded(server) == 0
    assert "modelpilot_feature_drift{" not in requests.get(server.url + "/metrics", timeout=5).text
    why = {"missing": "there is no reference profile file", "not-json": "is not JSON",
           "wrong-format": "format must be"}[profile]
    assert why in server.logs() and "Traceback" not in server.logs()


@pytest.mark.registry
def test_a_profile_logged_with_the_run_is_found_from_the_registered_version(
        start_server: StartServer, registry: Registry, model_name: str) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(registry.url)
    mlflow.set_experiment(f"drift-{model_name}")
    x = training_frame(500, seed=0)
    model = LogisticRegression().fit(x, predictions(x))
    versions = []
    for with_profile in (True, False):
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
                                            registered_model_name=model_name)
            if with_profile:
                uri = log_reference(x, run.info.run_id, predictions=model.predict(x))
                assert uri == f"runs:/{run.info.run_id}/modelpilot/reference_profile.json"
        versions.append(str(info.registered_model_version))
    env = {"MLFLOW_TRACKING_URI": registry.url}
    profiled = start_server(f"models:/{model_name}/{versions[0]}", "--log-level", "info", env=env)
    bare = start_server(f"models:/{model_name}/{versions[1]}", "--log-level", "info", env=env)
    assert profile_loaded(profiled) == 1
    send(profiled, training_frame(100, seed=3))
    wait_for(lambda: metric(profiled, "modelpilot_drift_samples") == 100, 20, "100 rows counted")
    assert profile_loaded(bare) == 0
    assert "there is no reference profile at runs:/" in bare.logs(), bare.logs()[-2000:]
    send(bare, training_frame(20, seed=3))


def bins(server: Server) -> dict[tuple[str, str], float]:
    """modelpilot_prediction_bin_total by (baseline, bin)."""
    found = {}
    for line in requests.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("modelpilot_prediction_bin_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            found[(labels["baseline"].strip('"'), labels["bin"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return found


def test_predictions_are_counted_into_the_baselines_bins_so_versions_can_be_compared(
        start_server: StartServer, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    reference = training_frame(2000, seed=0)
    stable_profile = tmp_path / "stable.json"
    stable_profile.write_text(json.dumps(build_profile(reference, predictions(reference)).to_dict()))
    own_profile = tmp_path / "own.json"
    own_profile.write_text(json.dumps(build_profile(reference, predictions(reference) * 10).to_dict()))
    stable = start_server(model_dirs["sklearn"], "--model-name", "fraud", "--model-version", "1",
                          "--drift-profile", str(stable_profile))
    canary = start_server(model_dirs["sklearn"], "--model-name", "fraud", "--model-version", "2",
                          "--drift-profile", str(own_profile), "--drift-baseline", "1",
                          "--drift-baseline-profile", str(stable_profile))
    for server in (stable, canary):
        assert profile_loaded(server) == 1
        counted = bins(server)
        assert {baseline for baseline, _ in counted} == {"1"}, "both count into version 1's bins"
        assert set(counted.values()) == {0.0}, "every bin's series exists before any prediction"
        send(server, training_frame(200, seed=4))
    assert bins(stable) == bins(canary), "the same model on the same rows: the same counts in the same bins"
    assert sum(bins(canary).values()) == 200
