"""A small client for the MLflow model registry REST API.

Why not the `mlflow` package: the operator only needs four read-only calls, and the mlflow client
drags in pandas, numpy and a web server; it also hides the HTTP status the operator needs to tell
"not found" from "unauthorized" from "unreachable". All calls are under `/api/2.0/mlflow/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from .uri import ModelRef, RefKind

API = "/api/2.0/mlflow"


class RegistryError(Exception):
    """Base class. `reason` is the CamelCase word that ends up in a status condition."""

    reason = "RegistryError"
    #: Whether retrying later may succeed without anyone changing anything.
    transient = True


class RegistryUnreachable(RegistryError):
    reason = "RegistryUnreachable"


class ModelNotFound(RegistryError):
    reason = "ModelNotFound"
    transient = False


class Unauthorized(RegistryError):
    reason = "RegistryUnauthorized"
    transient = False


class VersionNotReady(RegistryError):
    """The version exists but MLflow has not finished (or failed) registering it."""

    reason = "ModelVersionNotReady"


@dataclass(frozen=True)
class Credentials:
    """Either a bearer token or a username/password pair (MLflow's basic-auth app)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print secrets into logs
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"Credentials({kind})"


@dataclass(frozen=True)
class ResolvedModel:
    """One concrete, immutable registered model version."""

    name: str
    version: str
    run_id: str = ""
    source: str = ""
    #: Where the artifacts can be downloaded from (`get-download-uri`), e.g. mlflow-artifacts:/….
    download_uri: str = ""
    alias: str | None = None
    stage: str | None = None
    aliases: tuple[str, ...] = field(default=())

    def to_status(self, uri: str) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": uri, "name": self.name, "version": self.version}
        for key, value in (("alias", self.alias), ("stage", self.stage), ("runId", self.run_id),
                           ("source", self.source), ("downloadUri", self.download_uri)):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_status(cls, status_model: dict[str, Any]) -> ResolvedModel:
        return cls(
            name=str(status_model["name"]),
            version=str(status_model["version"]),
            run_id=str(status_model.get("runId", "")),
            source=str(status_model.get("source", "")),
            download_uri=str(status_model.get("downloadUri", "")),
            alias=status_model.get("alias"),
            stage=status_model.get("stage"),
        )


class RegistryClient:
    """Read-only access to one MLflow tracking server's model registry."""

    def __init__(
        self,
        tracking_uri: str,
        credentials: Credentials | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise RegistryUnreachable(
                f"tracking URI {tracking_uri!r} is not an http(s) URL; the operator talks to a "
                "tracking server, not to a local store"
            )
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        creds = credentials or Credentials()
        self._headers: dict[str, str] = {"Accept": "application/json"}
        self._auth: tuple[str, str] | None = None
        if creds.token:
            self._headers["Authorization"] = f"Bearer {creds.token}"
        elif creds.username:
            self._auth = (creds.username, creds.password or "")

    # -- HTTP ------------------------------------------------------------------------------------
    def _call(self, method: str, endpoint: str, what: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.base}{API}/{endpoint}"
        try:
            resp = self.session.request(
                method, url, headers=self._headers, auth=self._auth, timeout=self.timeout, **kwargs
            )
        except requests.Timeout as exc:
            raise RegistryUnreachable(f"registry at {self.base} timed out after {self.timeout:g}s") from exc
        except requests.RequestException as exc:
            raise RegistryUnreachable(f"registry at {self.base} is unreachable: {_short(exc)}") from exc
        body = _json_or_none(resp)
        message = (body or {}).get("message") or resp.text[:200].strip() or resp.reason
        code = (body or {}).get("error_code", "")
        if resp.status_code in (401, 403):
            raise Unauthorized(
                f"registry at {self.base} refused the credentials ({resp.status_code}) while reading {what}"
            )
        if resp.status_code == 404 or code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFound(f"{what} not found in the registry at {self.base}: {message}")
        if resp.status_code == 400 and code == "INVALID_PARAMETER_VALUE" and "not found" in message.lower():
            raise ModelNotFound(f"{what} not found in the registry at {self.base}: {message}")
        if resp.status_code >= 500:
            raise RegistryUnreachable(f"registry at {self.base} answered {resp.status_code}: {message}")
        if resp.status_code >= 400:
            raise RegistryError(f"registry at {self.base} rejected the request for {what}: {message}")
        if body is None:
            raise RegistryUnreachable(
                f"registry at {self.base} answered with something that is not JSON (is it an MLflow "
                "tracking server?)"
            )
        return body

    # -- registry calls --------------------------------------------------------------------------
    def get_version(self, name: str, version: str) -> dict[str, Any]:
        body = self._call("GET", "model-versions/get", f"model {name!r} version {version}",
                          params={"name": name, "version": version})
        return dict(body["model_version"])

    def get_by_alias(self, name: str, alias: str) -> dict[str, Any]:
        body = self._call("GET", "registered-models/alias", f"alias {alias!r} of model {name!r}",
                          params={"name": name, "alias": alias})
        return dict(body["model_version"])

    def get_latest(self, name: str, stage: str | None) -> dict[str, Any]:
        what = f"model {name!r} in stage {stage}" if stage else f"latest version of model {name!r}"
        payload: dict[str, Any] = {"name": name}
        if stage:
            payload["stages"] = [stage]
        body = self._call("POST", "registered-models/get-latest-versions", what, json=payload)
        versions = [v for v in body.get("model_versions", [])
                    if not stage or v.get("current_stage", "").lower() == stage.lower()]
        if not versions:
            raise ModelNotFound(f"{what}: no version found in the registry at {self.base}")
        return dict(max(versions, key=lambda v: int(v["version"])))

    def download_uri(self, name: str, version: str) -> str:
        body = self._call("GET", "model-versions/get-download-uri", f"model {name!r} version {version}",
                          params={"name": name, "version": version})
        return str(body.get("artifact_uri", ""))

    def resolve(self, ref: ModelRef) -> ResolvedModel:
        """Resolve a parsed URI to one ready model version."""
        if ref.kind is RefKind.ALIAS:
            mv = self.get_by_alias(ref.name, ref.value)
        elif ref.kind is RefKind.VERSION:
            mv = self.get_version(ref.name, ref.value)
        elif ref.kind is RefKind.STAGE:
            mv = self.get_latest(ref.name, ref.value)
        else:
            mv = self.get_latest(ref.name, None)
        version = str(mv["version"])
        status = mv.get("status", "READY")
        if status != "READY":
            detail = mv.get("status_message") or status
            raise VersionNotReady(f"model {ref.name!r} version {version} is not ready: {detail}")
        name = str(mv.get("name", ref.name))
        return ResolvedModel(
            name=name,
            version=version,
            run_id=str(mv.get("run_id") or ""),
            source=str(mv.get("source") or ""),
            download_uri=self.download_uri(name, version),
            alias=ref.alias,
            stage=ref.value if ref.kind is RefKind.STAGE else None,
            aliases=tuple(mv.get("aliases") or ()),
        )


def _json_or_none(resp: requests.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _short(exc: Exception) -> str:
    """The innermost reason of a requests error, without the wall of urllib3 text."""
    text = str(exc)
    for marker in ("Failed to establish a new connection: ", "Name or service not known"):
        if marker in text:
            tail = text.split(marker, 1)[1]
            return (marker + tail).split("'))")[0].rstrip(")")
    return text[:200]
