"""Every failure the server reports, mapped to an HTTP status in one place.

The body is always JSON: `{"error_code": ..., "message": ...}` (MLflow's scoring-server shape), never
a traceback.
"""

from __future__ import annotations

import logging
import uuid

import orjson

log = logging.getLogger("modelpilot_serve")


class ServingError(Exception):
    status = 500
    error_code = "INTERNAL_ERROR"
    #: Extra response headers.
    headers: tuple[tuple[bytes, bytes], ...] = ()

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


class RequestTimeout(ServingError):
    status = 408
    error_code = "REQUEST_TIMEOUT"


class HeadersTooLarge(ServingError):
    status = 431
    error_code = "HEADERS_TOO_LARGE"


class Overloaded(ServingError):
    status = 503
    error_code = "OVERLOADED"
    headers = ((b"retry-after", b"1"),)


class NotReady(ServingError):
    status = 503
    error_code = "NOT_READY"


class Timeout(ServingError):
    status = 504
    error_code = "TIMEOUT"


#: MLflow error codes that mean "the request was wrong" (schema enforcement, parsing).
CLIENT_CODES = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST")
#: What numpy, pandas, scikit-learn, XGBoost & co. raise for input they cannot use (NaN where none is
#: allowed, a missing column, a string where a number goes): the client's to fix, as in `mlflow models
#: serve` (which answers 400 for every exception of a predict call).
INPUT_ERRORS = (ValueError, TypeError, KeyError)
#: Put the model's exception text into 500 answers (for development: it may reveal internals).
EXPOSE_MODEL_ERRORS = False


def from_mlflow(exc: Exception) -> ServingError:
    """Classify an exception raised while parsing or predicting.

    Schema problems (MLflow's client error codes) and input the model cannot use (INPUT_ERRORS) are the
    caller's → 400 with the reason. Anything else is the model failing → 500 with a generic message
    and an error id; the exception and its traceback go to the server log under that id.
    """
    code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if code in CLIENT_CODES:
        return BadRequest(_trim(message))
    if isinstance(exc, INPUT_ERRORS) and code is None:
        return BadRequest(f"the model cannot use this input: {type(exc).__name__}: {_trim(message)}")
    error_id = uuid.uuid4().hex[:12]
    log.error("The model failed to predict [error id %s]: %s: %s", error_id, type(exc).__name__, _trim(message),
              exc_info=exc)
    detail = f": {type(exc).__name__}: {_trim(message)}" if EXPOSE_MODEL_ERRORS else "; the server log has the details"
    return ModelError(f"the model failed to predict (error id {error_id}){detail}")


def _trim(message: str, limit: int = 2000) -> str:
    # MLflow echoes the whole input into some messages ("Failed to predict data '...'"): keep it readable.
    return message if len(message) <= limit else message[:limit] + " …(truncated)"
