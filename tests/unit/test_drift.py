"""Data drift's math, without a server: the profile and the live counts share one definition of the bins,
the PSI is near 0 for the same distribution and large for a shifted one, odd input never raises, the window
forgets, and a profile that is not one is refused with a message naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpilot_serve.drift import FORMAT, Histogram, InvalidProfile, Monitor, Profile, build_profile, psi


def frame(rows: int, seed: int, shift: float = 0.0, colors: tuple[str, ...] = ("red", "green", "blue")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.lognormal(3 + shift, 1, rows), "age": rng.integers(18, 90, rows),
                         "color": rng.choice(colors, rows), "flag": rng.random(rows) < 0.3})


def test_the_same_distribution_drifts_little_and_a_shifted_one_a_lot() -> None:
    reference = frame(5000, seed=0)
    profile = Profile.from_dict(json.loads(json.dumps(build_profile(reference, reference["amount"] > 20).to_dict())))
    assert [(h.name, h.kind) for h in profile.features] == [
        ("amount", "numeric"), ("age", "numeric"), ("color", "categorical"), ("flag", "categorical")]
    same, shifted = Monitor(profile, 60), Monitor(profile, 60)
    live = frame(3000, seed=1)
    for start in range(0, 3000, 16):  # online traffic: small batches
        rows = live.iloc[start:start + 16]
        same.observe(rows, (rows["amount"] > 20).to_numpy())
    moved = frame(3000, seed=2, shift=1.0, colors=("red", "purple"))
    shifted.observe(moved, (moved["amount"] > 20).to_numpy())
    calm, drifted = same.measure(), shifted.measure()
    assert calm.samples == drifted.samples == 3000
    assert max(calm.features.values()) < 0.05 and calm.prediction is not None and calm.prediction < 0.05
    assert drifted.features["amount"] > 0.25 and drifted.features["color"] > 0.25
    assert drifted.features["age"] < 0.05 and drifted.features["flag"] < 0.05
    assert drifted.prediction is not None and drifted.prediction > 0.25


def test_unseen_categories_missing_values_and_absent_columns_have_bins_of_their_own() -> None:
    profile = build_profile(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, None], "c": ["a", "a", "b", None, "a"]}),
                            bins=2)
    x, c = profile.features
    assert x.reference.tolist()[-1] == 1 and c.reference.tolist() == [3, 1, 0, 1]  # a, b, other, missing
    assert c.count(pd.Series(["zzz", "a", None, float("nan")])).tolist() == [1, 0, 1, 2]
    assert x.count(pd.Series(["1.5", "not a number", None, 10])).tolist()[-1] == 2, "unreadable is missing"
    monitor = Monitor(profile, 60)
    monitor.observe(pd.DataFrame({"x": [1.0, 2.0]}), None)  # no column c: all missing, nothing raised
    drift = monitor.measure()
    assert drift.samples == 2 and drift.features["c"] > 1 and drift.prediction is None


@pytest.mark.parametrize("odd", [pd.DataFrame({"x": [{"a": 1}, [1, 2]], "c": [object(), b"bytes"]}),
                                 pd.DataFrame({"x": [np.inf, -np.inf], "c": [1, 2]}), pd.DataFrame(), "not a frame"])
def test_odd_batches_never_raise(odd: Any) -> None:
    monitor = Monitor(build_profile(pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})), 60)
    monitor.observe(odd, {"not": "rows"})
    monitor.measure()


def test_the_window_forgets_old_traffic() -> None:
    now = [1000.0]
    profile = build_profile(frame(1000, seed=0))
    monitor = Monitor(profile, window_seconds=60, slices=6, clock=lambda: now[0])
    monitor.observe(frame(500, seed=1, shift=2.0), None)
    assert monitor.measure().features["amount"] > 0.25
    now[0] += 30
    monitor.observe(frame(500, seed=2), None)
    assert monitor.measure().samples == 1000
    now[0] += 31  # the shifted batch is over 60 s old
    drift = monitor.measure()
    assert drift.samples == 500 and drift.features["amount"] < 0.05
    now[0] += 60
    assert monitor.measure().samples == 0 and monitor.measure().features == {}


def test_psi_is_symmetric_zero_for_equal_shares_and_finite_for_empty_bins() -> None:
    a, b = np.array([10, 20, 30, 0]), np.array([1, 2, 3, 0])
    assert psi(a, b) == pytest.approx(0.0, abs=1e-12)
    c = np.array([0, 0, 60, 0])
    assert psi(a, c) == pytest.approx(psi(c, a)) and 0 < psi(a, c) < 100


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()), min_size=1, max_size=50),
       st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=50))
def test_every_value_falls_in_exactly_one_bin(live: list[float | None], reference: list[float]) -> None:
    hist = build_profile(pd.DataFrame({"x": reference})).features[0]
    counts = hist.count(pd.Series(live, dtype="float64"))
    assert counts.sum() == len(live) and (counts >= 0).all()


def good() -> dict[str, Any]:
    return {"format": FORMAT, "rows": 4, "features": [
        {"name": "x", "kind": "numeric", "edges": [1.0, 2.0], "counts": [1, 2, 1], "missing": 0},
        {"name": "c", "kind": "categorical", "categories": ["a"], "counts": [3, 1], "missing": 0}],
        "predictions": None}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="v0"), "format must be"),
    (lambda d: d.update(features=[]), "features must be a list"),
    (lambda d: d["features"][0].update(edges=[2.0, 1.0]), "strictly increasing"),
    (lambda d: d["features"][0].update(edges=[1.0, float("inf")]), "finite numbers"),
    (lambda d: d["features"][0].update(counts=[1, 2]), "2 edges make 3 bins, but there are 2 counts"),
    (lambda d: d["features"][0].update(counts=[1, -2, 1]), "whole numbers of at least 0"),
    (lambda d: d["features"][1].update(categories=[1]), "categories must be a list of strings"),
    (lambda d: d["features"][1].update(kind="text"), "kind must be 'numeric' or 'categorical'"),
    (lambda d: d["features"][1].update(name="x"), "two features have the same name"),
    (lambda d: d.update(predictions={"name": "prediction", "kind": "numeric"}), "predictions (prediction): counts"),
])
def test_a_profile_that_is_not_one_is_refused_with_what_is_wrong(change: Any, message: str) -> None:
    Profile.from_dict(good())
    doc = good()
    change(doc)
    with pytest.raises(InvalidProfile, match=message.replace("(", r"\(").replace(")", r"\)")):
        Profile.from_dict(doc)


def test_bad_arguments_to_build_profile_are_value_errors() -> None:
    with pytest.raises(ValueError, match="non-empty pandas DataFrame"):
        build_profile(pd.DataFrame())
    with pytest.raises(ValueError, match="3 predictions for 2 rows"):
        build_profile(pd.DataFrame({"x": [1, 2]}), predictions=[1, 2, 3])
    with pytest.raises(ValueError, match="one value per row"):
        build_profile(pd.DataFrame({"x": [1, 2]}), predictions={"a": [1, 2]})
    assert isinstance(build_profile(pd.DataFrame({"x": [1, 2]})).features[0], Histogram)


def test_a_frame_of_numbers_and_a_mixed_frame_count_the_same_as_column_by_column() -> None:
    """Frames of numbers are counted from one float array (cheaper); the counts must be the same."""
    reference = frame(2000, seed=0)
    profile = build_profile(reference)
    live = frame(300, seed=5, shift=0.5)
    for data in (live, live[["age", "amount"]], live[["amount", "age"]].astype(object)):
        monitor = Monitor(profile, 60)
        monitor.observe(data, None)
        monitor.observe(data, None)  # the column set's positions from the cache
        expected = {h.name: psi(h.reference, 2 * (h.count(data[h.name]) if h.name in data.columns else
                                                  np.eye(h.size, dtype=np.int64)[-1] * len(data)))
                    for h in profile.features}
        assert monitor.measure().features == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
                          st.floats(allow_nan=True, allow_infinity=True, width=32)), min_size=1, max_size=40),
       st.booleans())
def test_numbers_binned_together_fall_where_searchsorted_puts_them(
        rows: list[tuple[float | None, float]], one_by_one: bool) -> None:
    import modelpilot_serve.drift as drift

    profile = build_profile(pd.DataFrame({"a": np.linspace(-5, 5, 50), "b": [0.0, 1.0] * 25, "c": ["x"] * 50}))
    data = pd.DataFrame(rows, columns=["a", "b"], dtype="float64")
    limit = drift.BROADCAST_LIMIT
    drift.BROADCAST_LIMIT = 0 if one_by_one else limit  # the per-feature path of large batches
    try:
        counts = Monitor(profile, 60)._count_features(data)
    finally:
        drift.BROADCAST_LIMIT = limit
    a, b, c = profile.features
    expected = np.concatenate([a.count(data["a"]), b.count(data["b"]), np.eye(c.size, dtype=np.int64)[-1] * len(data)])
    assert counts.tolist() == expected.tolist()
