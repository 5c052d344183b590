"""A small client for the MLflow model registry REST API (read-only, asynchronous).

Why not the `mlflow` package: the operator only needs four read-only calls, and the mlflow client
drags in pandas, numpy and a web server; it also hides the HTTP status the operator needs to tell
"not found" from "unauthorized" from "unreachable". All calls are under `/api/2.0/mlflow/`, joined to
the parsed tracking URI (never a string prefix, see `urls`).

What a registry says goes into a tenant-readable status, so messages are built here from what was
asked and the HTTP status; nothing of an answer's body is echoed (a tenant could point the operator
at any internal service and read its error pages otherwise).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .names import pinned_uri
from .outbound import read_limited
from .uri import ModelRef, RefKind
from .urls import BaseURL, InvalidURL, parse_base_url

API = "/api/2.0/mlflow"
#: The most bytes of one registry answer that are read (registry answers are a few kB).
MAX_BODY_BYTES = 1 << 20


class RegistryError(Exception):
    """Base class. `reason` is the CamelCase word that ends up in a status condition."""

    reason = "RegistryError"
    #: Whether retrying later may succeed without anyone changing anything.
    transient = True


class RegistryUnreachable(RegistryError):
    reason = "RegistryUnreachable"


class NotARegistry(RegistryError):
    """Something answered, but not as an MLflow tracking server does (a wrong URL, a proxy page)."""

    reason = "NotARegistry"


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
    #: When the version was registered (RFC 3339, from MLflow's creation_timestamp); "" if not said.
    registered_at: str = ""

    @property
    def pinned(self) -> str:
        return pinned_uri(self.name, self.version)

    @property
    def registered_epoch(self) -> float | None:
        """`registered_at` in seconds since the epoch; None when not known."""
        try:
            return datetime.fromisoformat(self.registered_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    def same_version(self, other: ResolvedModel | None) -> bool:
        return other is not None and (self.name, self.version) == (other.name, other.version)

    def to_status(self, uri: str) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": uri, "name": self.name, "version": self.version}
        for key, value in (("alias", self.alias), ("stage", self.stage), ("runId", self.run_id),
                           ("source", self.source), ("downloadUri", self.download_uri),
                           ("registeredAt", self.registered_at)):
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
            registered_at=str(status_model.get("registeredAt", "")),
        )


class Registry:
    """Read-only access to one MLflow tracking server's model registry over an aiohttp session."""

    def __init__(self, base: BaseURL, credentials: Credentials | None, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        creds = credentials or Credentials()
        self._headers: dict[str, str] = {"Accept": "application/json"}
        self._auth: aiohttp.BasicAuth | None = None
        if creds.token:
            self._headers["Authorization"] = f"Bearer {creds.token}"
        elif creds.username:
            self._auth = aiohttp.BasicAuth(creds.username, creds.password or "")

    async def _call(self, method: str, endpoint: str, what: str, params: dict[str, str] | None = None,
                    payload: dict[str, Any] | None = None) -> dict[str, Any]:
        where = f"the registry at {self.base.origin}"
        try:
            async with self.session.request(method, self.base.join(f"{API}/{endpoint}"), params=params,
                                            json=payload, headers=self._headers, auth=self._auth,
                                            allow_redirects=False) as resp:
                raw = await read_limited(resp, MAX_BODY_BYTES)
                status = resp.status
        except TimeoutError:
            raise  # the caller's deadline: reported by whoever set it
        except aiohttp.ClientError as exc:
            raise RegistryUnreachable(f"{where} is unreachable ({type(exc).__name__})") from None
        except OSError as exc:
            raise RegistryUnreachable(f"{where} is unreachable ({exc.strerror or type(exc).__name__})") from None
        body = _json_object(raw) if raw is not None else None
        code = str((body or {}).get("error_code", ""))
        message = str((body or {}).get("message", ""))
        if status in (401, 403):
            raise Unauthorized(f"{where} refused the credentials (HTTP {status}) while reading {what}")
        if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in message.lower()):
            raise ModelNotFound(f"{what} not found in {where}")
        if status >= 500:
            raise RegistryUnreachable(f"{where} answered HTTP {status} while reading {what}")
        if body is None or (status >= 400 and not code):
            raise NotARegistry(f"{where} answered HTTP {status} to {API}/{endpoint}, not as an MLflow "
                               "tracking server does: check spec.registry.trackingUri")
        if status >= 400:
            raise RegistryError(f"{where} rejected the request for {what} (HTTP {status}, {code})")
        return body

    async def get_version(self, name: str, version: str) -> dict[str, Any]:
        body = await self._call("GET", "model-versions/get", f"model {name!r} version {version}",
                                params={"name": name, "version": version})
        return _model_version(body, self.base)

    async def get_by_alias(self, name: str, alias: str) -> dict[str, Any]:
        body = await self._call("GET", "registered-models/alias", f"alias {alias!r} of model {name!r}",
                                params={"name": name, "alias": alias})
        return _model_version(body, self.base)

    async def get_latest(self, name: str, stage: str | None) -> dict[str, Any]:
        what = f"model {name!r} in stage {stage}" if stage else f"latest version of model {name!r}"
        payload: dict[str, Any] = {"name": name}
        if stage:
            payload["stages"] = [stage]
        body = await self._call("POST", "registered-models/get-latest-versions", what, payload=payload)
        versions = [v for v in body.get("model_versions") or [] if isinstance(v, dict)
                    and (not stage or str(v.get("current_stage", "")).lower() == stage.lower())]
        if not versions:
            raise ModelNotFound(f"{what}: no version found in the registry at {self.base.origin}")
        try:
            return dict(max(versions, key=lambda v: int(v["version"])))
        except (KeyError, TypeError, ValueError):
            raise NotARegistry(f"the registry at {self.base.origin} listed versions without numbers") from None

    async def download_uri(self, name: str, version: str) -> str:
        body = await self._call("GET", "model-versions/get-download-uri", f"model {name!r} version {version}",
                                params={"name": name, "version": version})
        return str(body.get("artifact_uri", ""))

    async def resolve(self, ref: ModelRef) -> ResolvedModel:
        """Resolve a parsed URI to one ready model version."""
        if ref.kind is RefKind.ALIAS:
            mv = await self.get_by_alias(ref.name, ref.value)
        elif ref.kind is RefKind.VERSION:
            mv = await self.get_version(ref.name, ref.value)
        elif ref.kind is RefKind.STAGE:
            mv = await self.get_latest(ref.name, ref.value)
        else:
            mv = await self.get_latest(ref.name, None)
        version = str(mv.get("version", ""))
        if not version.isdigit():
            raise NotARegistry(f"the registry at {self.base.origin} answered a version that is not a number")
        status = mv.get("status", "READY")
        if status != "READY":
            raise VersionNotReady(f"model {ref.name!r} version {version} is not ready (MLflow status {status})")
        name = str(mv.get("name", ref.name))
        return ResolvedModel(
            name=name,
            version=version,
            run_id=str(mv.get("run_id") or ""),
            source=str(mv.get("source") or ""),
            download_uri=await self.download_uri(name, version),
            alias=ref.alias,
            stage=ref.value if ref.kind is RefKind.STAGE else None,
            aliases=tuple(str(a) for a in mv.get("aliases") or ()),
            registered_at=_registered_at(mv.get("creation_timestamp")),
        )


class RegistryClient:
    """A blocking facade over `Registry` for scripts and tests: one call, one session, one deadline."""

    def __init__(self, tracking_uri: str, credentials: Credentials | None = None, timeout: float = 10.0) -> None:
        try:
            self.base = parse_base_url(tracking_uri, "tracking URI")
        except InvalidURL as exc:
            raise RegistryUnreachable(str(exc)) from None
        self.credentials = credentials
        self.timeout = timeout

    def resolve(self, ref: ModelRef) -> ResolvedModel:
        async def run() -> ResolvedModel:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
                try:
                    async with asyncio.timeout(self.timeout):
                        return await Registry(self.base, self.credentials, session).resolve(ref)
                except TimeoutError:
                    raise RegistryUnreachable(
                        f"the registry at {self.base.origin} did not answer within {self.timeout:g}s") from None

        return asyncio.run(run())


def _registered_at(millis: Any) -> str:
    """MLflow's creation_timestamp (milliseconds since the epoch, a number or a string) as RFC 3339."""
    try:
        seconds = int(millis) / 1000
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds > 0 else ""
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _model_version(body: dict[str, Any], base: BaseURL) -> dict[str, Any]:
    mv = body.get("model_version")
    if not isinstance(mv, dict):
        raise NotARegistry(f"the registry at {base.origin} answered without a model_version")
    return mv
