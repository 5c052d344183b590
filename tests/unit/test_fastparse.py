"""The scoring server's columnar JSON path gives exactly the frame the ordinary path gives, or declines."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpilot_serve import fastparse
from modelpilot_serve.fastparse import build_frame, frame_from_json

NAMES = ["f0", "f1", "f2"]
LAYOUT = (NAMES, "float64")


@pytest.fixture(autouse=True)
def small_bodies_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastparse, "COLUMNAR_BYTES", 0)


def ordinary(body: bytes, layout: tuple[list[str], str] = LAYOUT) -> Any:
    """What the server does without the columnar path: orjson, else Python's json (NaN, Infinity)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = json.loads(body)
    return build_frame(doc, layout) if isinstance(doc, dict) else None


numbers = st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
cells = numbers | st.none() | st.booleans() | st.text(max_size=3)
rows = (st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=1, max_size=6)  # the path answers
        | st.lists(st.lists(numbers, min_size=2, max_size=4), min_size=1, max_size=6)  # mostly ragged
        | st.lists(st.lists(cells, min_size=2, max_size=4), min_size=1, max_size=6))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.permutations(NAMES), rows, st.sampled_from(["split", "records", "split-pretty"]))
def test_columnar_frames_equal_the_ordinary_ones_or_decline(columns: list[str], data: list[list[Any]],
                                                            shape: str) -> None:
    if shape == "records":
        doc: dict[str, Any] = {"dataframe_records": [dict(zip(columns, row, strict=False)) for row in data]}
    else:
        doc = {"dataframe_split": {"columns": columns, "data": data}}
    body = json.dumps(doc, indent=2 if shape == "split-pretty" else None).encode()
    fast = frame_from_json(body, LAYOUT)
    if fast is not None:
        pd.testing.assert_frame_equal(fast, ordinary(body), check_exact=True)


@pytest.mark.parametrize("body", [
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3], [4, 5, 6]]}, "params": {"a": 1}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3]], "index": [7]}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3], [4, 5]]}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3], [4, null, 6]]}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3]]}}{"dataframe_split": null}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, 3],]}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f2"], "data": [[1, 2, +3]]}}',
    b'{"dataframe_split": {"columns": ["f0", "f1", "f0"], "data": [[1, 2, 3]]}}',
    b'{"dataframe_records": [{"f0": 1, "f1": 2, "f2": 3}, {"f0": 1, "f1": 2}]}',
    b'{"instances": [[1, 2, 3]]}',
    b'[[1, 2, 3]]',
])
def test_unusual_bodies_take_the_ordinary_path(body: bytes) -> None:
    assert frame_from_json(body, LAYOUT) is None


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("shape", ["split", "records"])
def test_plain_numeric_bodies_are_parsed_into_columns(shape: str, indent: int | None) -> None:
    data = np.random.default_rng(4).random((200, 3)).round(4).tolist()
    data[0] = [1, -2, 3]  # ints among floats
    doc: dict[str, Any] = ({"dataframe_split": {"columns": ["f2", "f0", "f1"], "data": data}} if shape == "split"
                           else {"dataframe_records": [dict(zip(["f2", "f0", "f1"], r, strict=True)) for r in data]})
    body = json.dumps(doc, indent=indent).encode()
    fast = frame_from_json(body, LAYOUT)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, ordinary(body), check_exact=True)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_literals_python_json_reads_give_the_same_values(literal: str) -> None:
    body = f'{{"dataframe_split": {{"columns": ["f0", "f1", "f2"], "data": [[1, 2, {literal}]]}}}}'.encode()
    fast = frame_from_json(body, LAYOUT)
    if fast is not None:
        pd.testing.assert_frame_equal(fast, ordinary(body), check_exact=True)


def test_float32_columns_round_like_numpy() -> None:
    data = np.random.default_rng(3).random((50, 3)).tolist()
    body = json.dumps({"dataframe_split": {"columns": NAMES, "data": data}}).encode()
    pd.testing.assert_frame_equal(frame_from_json(body, (NAMES, "float32")), ordinary(body, (NAMES, "float32")),
                                  check_exact=True)
