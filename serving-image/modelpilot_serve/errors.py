"""Every failure the server reports, mapped to an HTTP status in one place.

The body is always JSON: `{"error_code": ..., "message": ...}` (MLflow's scoring-server shape), never
a traceback.
"""

from __future__ import annotations

import orjson


class ServingError(Exception):
    status = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return orjson.dumps({"error_code": self.error_code, "message": self.message})


class BadRequest(ServingError):
    status = 400
    error_code = "BAD_REQUEST"


class NotFound(ServingError):
    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class MethodNotAllowed(ServingError):
    status = 405
    error_code = "METHOD_NOT_ALLOWED"


class PayloadTooLarge(ServingError):
    status = 413
    error_code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ServingError):
    status = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class ModelError(ServingError):
    """The model itself raised: the server keeps serving."""

    status = 500
    error_code = "MODEL_ERROR"


class NotReady(ServingError):
    status = 503
    error_code = "NOT_READY"


class Timeout(ServingError):
    status = 504
    error_code = "TIMEOUT"


def from_mlflow(exc: Exception) -> ServingError:
    """Classify an exception raised while parsing or predicting.

    MLflow raises MlflowException with INVALID_PARAMETER_VALUE / BAD_REQUEST for schema problems
    (missing column, wrong type): those are the caller's input → 400. Anything else the model raised
    is the model's failure → 500 with its message.
    """
    code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST"):
        return BadRequest(_trim(message))
    if isinstance(exc, ValueError | TypeError | KeyError) and _looks_like_input_problem(message):
        return BadRequest(_trim(message))
    return ModelError(f"the model failed to predict: {type(exc).__name__}: {_trim(message)}")


def _looks_like_input_problem(message: str) -> bool:
    lowered = message.lower()
    return any(w in lowered for w in ("feature", "column", "shape", "dtype", "could not convert", "expected"))


def _trim(message: str, limit: int = 2000) -> str:
    # MLflow echoes the whole input into some messages ("Failed to predict data '...'"): keep it readable.
    return message if len(message) <= limit else message[:limit] + " …(truncated)"
