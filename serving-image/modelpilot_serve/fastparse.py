"""A fast, equivalent replacement for MLflow's JSON → DataFrame step in the common case.

MLflow's `infer_and_parse_data` builds a DataFrame and then casts it column by column (~3.5 ms for
20 columns, whatever the row count). When the model's signature is all-numeric columns of one type
and the request names exactly those columns, one `numpy.asarray(rows, dtype)` gives the same frame
in microseconds. Anything else (other formats, mixed types, strings, missing or extra columns, a
value numpy cannot convert) returns None, and the caller uses MLflow's own parser. Schema
enforcement is not skipped: `pyfunc.predict` still runs MLflow's full `_enforce_schema`.
"""

from __future__ import annotations

from typing import Any

_NUMERIC = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}


def numeric_layout(schema: Any) -> tuple[list[str], str] | None:
    """(column names, numpy dtype) when every input is a required numeric column of one type."""
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    names, types = [], set()
    for col in schema.inputs:
        kind = getattr(col.type, "name", str(col.type))
        if kind not in _NUMERIC or not getattr(col, "required", True):
            return None
        names.append(col.name)
        types.add(_NUMERIC[kind])
    if len(types) != 1:
        return None
    return names, types.pop()


def build_frame(doc: dict[str, Any], layout: tuple[list[str], str]) -> Any | None:
    import numpy as np
    import pandas as pd

    names, dtype = layout
    if dtype.startswith("int"):
        return None  # MLflow refuses lossy float→int casts per column; let it say so
    try:
        if "dataframe_split" in doc:
            split = doc["dataframe_split"]
            columns = split["columns"]
            if sorted(columns) != sorted(names) or len(columns) != len(names):
                return None
            rows = split["data"]
        elif "dataframe_records" in doc:
            records = doc["dataframe_records"]
            if not records or set(records[0]) != set(names):
                return None
            columns = list(records[0])
            if any(len(r) != len(columns) for r in records):
                return None
            rows = [[r[c] for c in columns] for r in records]
        else:
            return None
        if any(isinstance(v, str | bool) for v in rows[0]):
            return None
        array = np.asarray(rows, dtype=dtype)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if array.ndim != 2 or array.shape[1] != len(columns):
        return None
    return pd.DataFrame(array, columns=columns)
