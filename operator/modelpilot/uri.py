"""Parse `models:/…` registry URIs into what the registry must be asked.

Why a module of its own: the URI is user input that decides which registry call is made, and MLflow
accepts several spellings (`@alias`, `/alias`, `/<version>`, `/<Stage>`, `/latest`). Keeping the parse
pure and exhaustive lets the CRD, the operator and the tests agree on one grammar.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .names import pinned_uri

SCHEME = "models:/"

#: Stage names MLflow knows (case-insensitive, as in mlflow's own resolver).
STAGES = ("None", "Staging", "Production", "Archived")

# MLflow's alias rule: letters, digits, '_' and '-'; not `latest`, not `v<digits>` (reserved for versions).
_ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_VERSION = re.compile(r"^[0-9]+$")


class InvalidModelURI(ValueError):
    """The URI cannot name a registered model version."""


class RefKind(enum.Enum):
    VERSION = "version"
    ALIAS = "alias"
    STAGE = "stage"
    LATEST = "latest"


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/` URI: the registered model and how to pick one of its versions."""

    name: str
    kind: RefKind
    #: The version number, alias, or canonical stage name; empty for LATEST.
    value: str = ""

    @property
    def is_floating(self) -> bool:
        """Whether the URI can point at a different version later (aliases, stages, latest)."""
        return self.kind is not RefKind.VERSION

    @property
    def alias(self) -> str | None:
        return self.value if self.kind is RefKind.ALIAS else None

    def pinned(self, version: str) -> str:
        """The immutable URI of one resolved version, as the serving pod receives it."""
        return pinned_uri(self.name, version)

    def __str__(self) -> str:
        if self.kind is RefKind.ALIAS:
            return f"{SCHEME}{self.name}@{self.value}"
        if self.kind is RefKind.LATEST:
            return f"{SCHEME}{self.name}/latest"
        return f"{SCHEME}{self.name}/{self.value}"


def _canonical_stage(text: str) -> str | None:
    for stage in STAGES:
        if stage.lower() == text.lower():
            return stage
    return None


def _check_name(name: str, uri: str) -> str:
    if not name or name.strip() != name:
        raise InvalidModelURI(f"{uri!r}: the registered model name is empty or has surrounding spaces")
    return name


def _check_alias(alias: str, uri: str) -> str:
    if not _ALIAS.match(alias):
        raise InvalidModelURI(
            f"{uri!r}: alias {alias!r} may only hold letters, digits, '_' and '-'"
        )
    if _RESERVED_ALIAS.match(alias):
        raise InvalidModelURI(f"{uri!r}: {alias!r} is reserved by MLflow and cannot be an alias")
    return alias


def parse_model_uri(uri: str) -> ModelRef:
    """Parse a registry URI.

    Accepted forms: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/STAGE``,
    ``models:/NAME/latest`` and ``models:/NAME/ALIAS`` (an alias written with a slash: anything that is
    neither a number, a stage nor ``latest``). Raises :class:`InvalidModelURI` with a message naming
    the problem otherwise.
    """
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise InvalidModelURI(
            f"{uri!r}: must start with {SCHEME!r} and name a registered model, "
            f"e.g. models:/fraud-detector@champion"
        )
    rest = uri[len(SCHEME):]
    if rest.startswith("/"):
        raise InvalidModelURI(
            f"{uri!r}: names a registry profile (models://profile/...), which is not supported; "
            "set spec.registry.trackingUri instead"
        )
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if "/" in alias:
            raise InvalidModelURI(f"{uri!r}: nothing may follow the alias")
        return ModelRef(_check_name(name, uri), RefKind.ALIAS, _check_alias(alias, uri))
    name, sep, selector = rest.rpartition("/")
    if not sep or not selector:
        raise InvalidModelURI(
            f"{uri!r}: names no version; write models:/NAME@ALIAS, models:/NAME/VERSION or "
            "models:/NAME/STAGE"
        )
    _check_name(name, uri)
    if _VERSION.match(selector):
        if int(selector) < 1:
            raise InvalidModelURI(f"{uri!r}: model versions start at 1")
        return ModelRef(name, RefKind.VERSION, str(int(selector)))
    if selector.lower() == "latest":
        return ModelRef(name, RefKind.LATEST)
    stage = _canonical_stage(selector)
    if stage is not None:
        return ModelRef(name, RefKind.STAGE, stage)
    return ModelRef(name, RefKind.ALIAS, _check_alias(selector, uri))
