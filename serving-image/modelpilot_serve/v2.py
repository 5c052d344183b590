"""Open Inference Protocol v2 (KServe / Triton / MLServer clients): tensors in, tensors out. Pure."""

from __future__ import annotations

import math
from typing import Any

import orjson

from .errors import BadRequest
from .loader import LoadedModel

_DTYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
_MLFLOW_TO_V2 = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                 "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        return [x for part in data for x in _flatten(part)]
    return data


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_reshape(flat[i:i + step], shape[1:]) for i in range(0, len(flat), step)]


def to_mlflow(body: bytes, schema: Any) -> tuple[dict[str, Any], str | None]:
    """A v2 inference request as the equivalent MLflow `inputs` document (and the request id)."""
    if not body.strip():
        raise BadRequest("empty request body; send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("a v2 inference request needs a non-empty 'inputs' list of tensors")
    tensors = {}
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype and data")
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
        if missing:
            raise BadRequest(f"inputs[{i}] lacks {', '.join(missing)}")
        name, shape, data = tensor["name"], tensor["shape"], tensor["data"]
        if not isinstance(name, str) or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape) or not shape:
            raise BadRequest(f"inputs[{i}]: name must be a string and shape a non-empty list of sizes >= 1")
        flat = _flatten(data)
        if len(flat) != math.prod(shape):
            raise BadRequest(f"inputs[{i}] ({name}): shape {shape} needs {math.prod(shape)} values, "
                             f"data has {len(flat)}")
        tensors[name] = (shape, flat)
    rid = doc.get("id")
    columnar = schema is not None and not schema.is_tensor_spec() and schema.has_input_names()
    if columnar:
        # One tensor per column, shape [rows] or [rows, 1] (MLServer's pandas codec does the same).
        columns = {}
        for name, (shape, flat) in tensors.items():
            columns[name] = flat if len(shape) == 1 or math.prod(shape[1:]) == 1 else _reshape(flat, shape)
        return {"inputs": columns}, rid if isinstance(rid, str) else None
    if len(tensors) == 1:
        (shape, flat), = tensors.values()
        return {"inputs": _reshape(flat, shape)}, rid if isinstance(rid, str) else None
    return {"inputs": {n: _reshape(f, s) for n, (s, f) in tensors.items()}}, rid if isinstance(rid, str) else None


def _tensor(name: str, value: Any) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(value)
    datatype = _DTYPES.get(arr.dtype.name, "BYTES")
    data = arr.reshape(-1).tolist()
    if datatype == "BYTES":
        data = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in data]
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}


def outputs(predictions: Any) -> list[dict[str, Any]]:
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return [_tensor(str(c), predictions[c].to_numpy()) for c in predictions.columns]
    if isinstance(predictions, dict):
        return [_tensor(str(k), v) for k, v in predictions.items()]
    if isinstance(predictions, pd.Series):
        return [_tensor(str(predictions.name or "predict"), predictions.to_numpy())]
    return [_tensor("predict", predictions)]


def metadata(model: LoadedModel, name: str, version: str) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = []
    outputs_: list[dict[str, Any]] = []
    sig = model.pyfunc.metadata.signature
    for spec, out in ((getattr(sig, "inputs", None), inputs), (getattr(sig, "outputs", None), outputs_)):
        if spec is None:
            continue
        for i, item in enumerate(spec.inputs):
            if spec.is_tensor_spec():
                out.append({"name": item.name or f"input-{i}", "datatype": _DTYPES.get(item.type.name, "BYTES"),
                            "shape": list(item.shape)})
            else:
                out.append({"name": item.name or f"column-{i}",
                            "datatype": _MLFLOW_TO_V2.get(getattr(item.type, "name", str(item.type)), "BYTES"),
                            "shape": [-1]})
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": "mlflow",
        "inputs": inputs,
        "outputs": outputs_,
        "parameters": {
            "flavors": model.flavors,
            "load_seconds": round(model.load_seconds, 3),
            "dependency_warnings": model.dependency_warnings,
            "batching": model.batching,
            "onnxruntime_providers": model.providers,
        },
    }
