"""Request decoding, batch merging and response splitting for the MLflow scoring protocol. Pure.

Why this shape: `mlflow models serve` parses each request into a DataFrame and calls predict once per
request; the model's own cost barely grows with rows, so the headroom is in merging concurrent
requests. We merge at the JSON level (concatenating rows of requests that have the same columns,
value types and params), hand the merged document to MLflow's own parser and schema enforcement
once per batch, and slice the predictions back. Anything we cannot merge safely runs alone, through
exactly the code `mlflow models serve` runs, so responses stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import BadRequest, UnsupportedMediaType
from .fastparse import frame_from_json

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
REQUIRED = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)


@dataclass(frozen=True)
class Request:
    """One decoded /invocations request."""

    #: The JSON document as sent (None for CSV).
    doc: dict[str, Any] | None
    #: The raw body, for the paths that hand it to MLflow untouched.
    body: bytes
    content_type: str
    #: Rows in this request (0 when unknown: it then runs alone).
    rows: int
    #: Requests with equal, non-None keys can share one predict call.
    merge_key: tuple[Any, ...] | None
    #: The DataFrame MLflow's parser would build, when a big numeric body was parsed into columns.
    frame: Any = None


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in (content_type or "").split(";")]
    params = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in parts[1:] if p)}
    return parts[0].lower(), params


def check_content_type(content_type: str | None) -> str:
    """The media type if it is one the scoring protocol accepts; raises UnsupportedMediaType otherwise."""
    mime, params = media_type(content_type)
    if not mime:
        raise UnsupportedMediaType("missing Content-Type; send application/json or text/csv")
    if mime not in ("application/json", "text/csv", "application/vnd.apache.parquet"):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {mime!r}; send application/json (dataframe_split, "
            "dataframe_records, instances or inputs) or text/csv")
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType("the scoring server only supports UTF-8")
    extra = set(params) - {"charset"}
    if extra:
        raise UnsupportedMediaType(f"unrecognized Content-Type parameters: {', '.join(sorted(extra))}")
    return mime


def _types(values: Any) -> tuple[str, ...]:
    return tuple(type(v).__name__ for v in values)


def _rows_key(kind: str, rows: Any) -> tuple[int, tuple[Any, ...] | None]:
    """Row count and merge key for a list of rows (lists, dicts or scalars) under `kind`."""
    if not isinstance(rows, list) or not rows:
        return 0, None
    first = rows[0]
    if isinstance(first, dict):
        keys = tuple(first)
        if not all(isinstance(r, dict) and tuple(r) == keys for r in rows):
            return 0, None
        return len(rows), (kind, "records", keys, _types(first.values()))
    if isinstance(first, list):
        width = len(first)
        if not all(isinstance(r, list) and len(r) == width for r in rows):
            return 0, None
        if any(isinstance(v, list | dict) for v in first):
            return 0, None  # nested tensors: shapes must line up exactly; run alone
        return len(rows), (kind, "rows", width, _types(first))
    if isinstance(first, int | float | str | bool):
        if not all(type(r) is type(first) for r in rows):
            return 0, None
        return len(rows), (kind, "scalars", type(first).__name__)
    return 0, None


def _columns_key(kind: str, cols: dict[str, Any]) -> tuple[int, tuple[Any, ...] | None]:
    """Row count and merge key for a dict of equally long column lists."""
    if not cols or not all(isinstance(v, list) for v in cols.values()):
        return 0, None
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1 or 0 in lengths:
        return 0, None
    if any(isinstance(v[0], list | dict) for v in cols.values()):
        return 0, None
    return lengths.pop(), (kind, "columns", tuple(cols), tuple(type(v[0]).__name__ for v in cols.values()))


def decode(body: bytes, content_type: str | None, layout: tuple[list[str], str] | None = None) -> Request:
    """Validate the envelope and work out how (and whether) the request can be batched.

    `layout` (the model's all-numeric input columns, when its inputs are parsed into a DataFrame) lets a
    big body be parsed straight into that frame: it then runs alone, and the body is not kept."""
    mime = check_content_type(content_type)
    if not body or not body.strip():
        raise BadRequest("empty request body; send a JSON document such as "
                         '{"dataframe_split": {"columns": [...], "data": [[...]]}}')
    if mime != "application/json":
        return Request(None, body, mime, 0, None)
    frame = frame_from_json(body, layout) if layout is not None else None
    if frame is not None:
        return Request(None, b"", mime, len(frame), None, frame)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        doc = _lenient_json(body, exc)
    if not isinstance(doc, dict):
        raise BadRequest(f"{REQUIRED}. Received {type(doc).__name__ if doc is not None else 'null'}.")
    present = [k for k in FORMATS if k in doc]
    if len(present) != 1:
        # Maybe the unified LLM format (messages, prompt, ...): MLflow's own parser decides.
        return Request(doc, body, mime, 0, None)
    kind = present[0]
    payload = doc[kind]
    params = doc.get("params")
    unknown = set(doc) - {kind, "params"}
    if unknown or (params is not None and not isinstance(params, dict)):
        return Request(doc, body, mime, 0, None)
    params_key = orjson.dumps(params, option=orjson.OPT_SORT_KEYS) if params else b""

    rows, key = 0, None
    if kind == DF_SPLIT:
        if isinstance(payload, dict) and set(payload) <= {"columns", "data"} and "columns" in payload:
            columns = payload["columns"]
            data = payload.get("data")
            if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
                rows, key = _rows_key(kind, data)
                if key is not None:
                    if key[1] != "rows" or key[2] != len(columns):
                        rows, key = 0, None
                    else:
                        key = (*key, tuple(columns))
    elif kind == DF_RECORDS or isinstance(payload, list):
        rows, key = _rows_key(kind, payload)
    elif isinstance(payload, dict):
        rows, key = _columns_key(kind, payload)
    if key is not None:
        key = (*key, params_key)
    return Request(doc, body, mime, rows, key)


def _lenient_json(body: bytes, error: Exception) -> Any:
    """What Python's json module reads and orjson does not: NaN, Infinity, numbers beyond a double
    (`mlflow models serve` parses with json.loads, so such bodies are valid there)."""
    import json

    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def merge(requests: list[Request]) -> dict[str, Any]:
    """One MLflow JSON document holding the rows of all `requests` (which share a merge key)."""
    first = requests[0]
    assert first.doc is not None and first.merge_key is not None
    kind = first.merge_key[0]
    shape = first.merge_key[1]
    docs = [r.doc for r in requests if r.doc is not None]
    merged: Any
    if kind == DF_SPLIT:
        merged = {"columns": first.doc[DF_SPLIT]["columns"],
                  "data": [row for d in docs for row in d[DF_SPLIT]["data"]]}
    elif shape == "columns":
        merged = {col: [v for d in docs for v in d[kind][col]] for col in first.doc[kind]}
    else:
        merged = [row for d in docs for row in d[kind]]
    out: dict[str, Any] = {kind: merged}
    if "params" in first.doc:
        out["params"] = first.doc["params"]
    return out


def split(predictions: Any, counts: list[int]) -> list[Any] | None:
    """Slice batched predictions back into one result per request; None if the shape does not allow it."""
    import numpy as np
    import pandas as pd

    total = sum(counts)
    bounds = []
    start = 0
    for n in counts:
        bounds.append((start, start + n))
        start += n

    if isinstance(predictions, np.ndarray):
        if predictions.ndim == 0 or predictions.shape[0] != total:
            return None
        return [predictions[a:b] for a, b in bounds]
    if isinstance(predictions, pd.DataFrame | pd.Series):
        if len(predictions) != total:
            return None
        return [predictions.iloc[a:b].reset_index(drop=True) for a, b in bounds]
    if isinstance(predictions, list):
        if len(predictions) != total:
            return None
        return [predictions[a:b] for a, b in bounds]
    if isinstance(predictions, dict) and predictions:
        values = list(predictions.values())
        if not all(isinstance(v, np.ndarray | list) and len(v) == total for v in values):
            return None
        return [{k: v[a:b] for k, v in predictions.items()} for a, b in bounds]
    return None
