"""Reading one field of a ModelDeployment's spec: a typed value, or `InvalidSpec` naming the field.

Why a module of its own: the spec's parts are parsed in several modules (spec, podtemplate, autoscaling),
and each must refuse the same bad input with the same kind of message. They all use these helpers.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .durations import parse_duration
from .urls import BaseURL, InvalidURL, parse_base_url


class InvalidSpec(ValueError):
    """The spec cannot be acted upon; the message names the field."""


def obj(value: Any, path: str) -> dict[str, Any]:
    """An object field ({} when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(f"{path} must be an object")
    return value


def objects(value: Any, path: str) -> list[dict[str, Any]]:
    """A list of objects ([] when absent)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidSpec(f"{path} must be a list of objects")
    return value


def integer(value: Any, path: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    if value is None:
        return default
    if maximum is not None and (isinstance(value, bool) or not isinstance(value, int)
                                or not minimum <= value <= maximum):
        raise InvalidSpec(f"{path} must be a whole number from {minimum} to {maximum}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{path} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidSpec(f"{path} must be at least {minimum}, got {value}")
    return value


def choice(value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
    if value in (None, ""):
        return default
    if value not in choices:
        raise InvalidSpec(f"{path} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def duration(value: Any, path: str) -> float | None:
    """Seconds of a duration field (30s, 5m, 1h30m, 30d); None when absent."""
    if value in (None, ""):
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidSpec(f"{path}: {exc}") from None


def prometheus_url(value: Any, path: str, settings: Settings, needed_for: str = "") -> BaseURL:
    """The Prometheus a field names, else the operator's default; neither is an error naming the field."""
    url = value or settings.default_prometheus_url
    if not url:
        raise InvalidSpec(f"{path} is not set and the operator has no default (MODELPILOT_DEFAULT_PROMETHEUS_URL)"
                          + (f": {needed_for}" if needed_for else ""))
    try:
        return parse_base_url(url, path)
    except InvalidURL as exc:
        raise InvalidSpec(str(exc)) from None
