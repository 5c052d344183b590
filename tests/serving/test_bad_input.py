"""Bad payloads side by side with `mlflow models serve`: the same status class for every one.

A client's mistake must be a 4xx, never a 5xx: canary analysis counts 5xx as the model's failures,
so a client sending a few nulls would otherwise roll a healthy canary back. Where MLflow accepts a
payload (NaN and Infinity literals, which Python's json module reads), we accept it too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.serving.conftest import Server
from tests.serving.models import COLUMNS

JSON = "application/json"
CSV = "text/csv"


def split(rows: Any, columns: Any = COLUMNS) -> str:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}})


PAYLOADS: list[tuple[str, str, str]] = [
    ("null-cell", split([[None, 0.1, 0.2, 0.3, 0.4]]), JSON),
    ("all-null-row", split([[None] * 5]), JSON),
    ("nan-string", split([["nan", 0.1, 0.2, 0.3, 0.4]]), JSON),
    ("word-in-cell", split([["abc", 0.1, 0.2, 0.3, 0.4]]), JSON),
    ("ragged-rows", split([[0.1, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5]]), JSON),
    ("row-too-long", split([[0.1] * 7]), JSON),
    ("missing-column", split([[0.1] * 4], COLUMNS[:4]), JSON),
    ("nested-list-cell", split([[[1, 2], 0.1, 0.2, 0.3, 0.4]]), JSON),
    ("dict-cell", split([[{"a": 1}, 0.1, 0.2, 0.3, 0.4]]), JSON),
    ("data-not-a-list", json.dumps({"dataframe_split": {"columns": COLUMNS, "data": 5}}), JSON),
    ("columns-not-a-list", json.dumps({"dataframe_split": {"columns": "f0", "data": [[1]]}}), JSON),
    ("records-missing-key", json.dumps({"dataframe_records": [{"f0": 1, "f1": 2}]}), JSON),
    ("records-null-value", json.dumps({"dataframe_records": [dict.fromkeys(COLUMNS, None)]}), JSON),
    ("records-not-a-list", json.dumps({"dataframe_records": {"f0": 1}}), JSON),
    ("instances-scalars", json.dumps({"instances": [1, 2, 3]}), JSON),
    ("inputs-ragged", json.dumps({"inputs": [[1, 2, 3, 4, 5], [1]]}), JSON),
    ("two-formats", json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[0] * 5]},
                                "instances": [[0] * 5]}), JSON),
    ("empty-object", "{}", JSON),
    ("params-not-object", json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[0] * 5]}, "params": 3}), JSON),
    ("index-length-mismatch", json.dumps({"dataframe_split": {"columns": COLUMNS, "index": [1, 2],
                                                              "data": [[0] * 5]}}), JSON),
    ("nan-literal", '{"dataframe_split": {"columns": ["f0","f1","f2","f3","f4"], "data": [[NaN, 0, 0, 0, 0]]}}',
     JSON),
    ("infinity-literal",
     '{"dataframe_split": {"columns": ["f0","f1","f2","f3","f4"], "data": [[Infinity, 0, 0, 0, 0]]}}', JSON),
    ("huge-number", '{"dataframe_split": {"columns": ["f0","f1","f2","f3","f4"], "data": [[1e400, 0, 0, 0, 0]]}}',
     JSON),
    ("csv-short-row", "f0,f1,f2,f3,f4\n1,2\n", CSV),
    ("csv-word", "f0,f1,f2,f3,f4\nabc,1,2,3,4\n", CSV),
    ("csv-header-only", "f0,f1,f2,f3,f4\n", CSV),
    ("truncated-json", split([[0.1] * 5])[:-3], JSON),
]


def status_class(code: int) -> str:
    return f"{code // 100}xx"


@pytest.mark.parametrize(("body", "content_type"), [pytest.param(b, c, id=n) for n, b, c in PAYLOADS])
def test_bad_payloads_get_the_status_class_mlflow_models_serve_gives(
        sklearn_server: Server, mlflow_reference: Server, body: str, content_type: str) -> None:
    theirs = mlflow_reference.post("/invocations", body, content_type)
    ours = sklearn_server.post("/invocations", body, content_type)
    assert status_class(ours.status_code) == status_class(theirs.status_code), (
        f"ours {ours.status_code} {ours.text[:300]} / mlflow {theirs.status_code} {theirs.text[:300]}")
    assert ours.headers["content-type"] == "application/json" and "Traceback" not in ours.text
    if ours.status_code == 200:
        assert ours.json() == theirs.json()


def test_a_compressed_body_is_refused_not_inflated(sklearn_server: Server, mlflow_reference: Server) -> None:
    import gzip

    import requests

    body = gzip.compress(b'{"dataframe_split": {"columns": ["a"], "data": [[0]]}}' + b" " * 10_000_000)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    ours = requests.post(sklearn_server.url + "/invocations", data=body, headers=headers, timeout=30)
    theirs = requests.post(mlflow_reference.url + "/invocations", data=body, headers=headers, timeout=30)
    assert ours.status_code == 415 and "Content-Encoding 'gzip' is not supported" in ours.json()["message"]
    assert status_class(theirs.status_code) == "4xx"
