"""Who may call the model: `--auth-mode none | kubernetes | api-key`.

- `kubernetes`: callers send a ServiceAccount token (`Authorization: Bearer ...`) minted for the
  audience `--auth-audience` (so a model that receives it cannot replay it against the API server or
  another audience). The server asks the API server with its own token: a TokenReview (who is this?)
  and a SubjectAccessReview (may they `create` `modeldeployments/predict` named this model?), so a
  plain RBAC Role grants access to one model. Answers are cached briefly, per token hash.
- `api-key`: keys are the values of the files in `--auth-api-keys-dir` (a mounted Secret: kubelet
  refreshes it in place, and the server re-reads it when it changes, so keys rotate without a restart).
  Only their SHA-256 digests are kept, compared in constant time. Sent as `Authorization: Bearer <key>`
  or `X-API-Key: <key>`.

401 without usable credentials, 403 when they are valid but not allowed; never a 5xx (an API server that
does not answer is a 401 saying so, with Retry-After). Probes and /metrics stay open (the app decides).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ServingError

log = logging.getLogger("modelpilot_serve")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP, RESOURCE, SUBRESOURCE, VERB = "modelpilot.dev", "modeldeployments", "predict", "create"
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class Unauthorized(ServingError):
    status = 401
    error_code = "UNAUTHENTICATED"
    headers: tuple[tuple[bytes, bytes], ...] = ((b"www-authenticate", b'Bearer realm="modelpilot"'),)


class Unverifiable(Unauthorized):
    headers = ((b"www-authenticate", b'Bearer realm="modelpilot"'), (b"retry-after", b"1"))


class Forbidden(ServingError):
    status = 403
    error_code = "PERMISSION_DENIED"


def _credential(headers: list[tuple[bytes, bytes]], api_key_header: bool) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif api_key_header and name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """Digests of the keys in a mounted Secret's directory, re-read when it changes (checked ≤ 1/s)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self._digests: list[bytes] = []
        self._stamp: object = None
        self._checked = 0.0
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            files = sorted(p for p in self.directory.iterdir() if not p.name.startswith(".") and p.is_file())
            stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
            if stamp == self._stamp:
                return
            keys = [p.read_text(errors="surrogateescape").strip() for p in files]
        except OSError as exc:
            log.warning("Cannot read the API keys in %s: %s", self.directory, exc)
            return  # keep the keys we had
        digests = [_digest(key) for key in keys if key]
        self._digests, self._stamp = digests, stamp
        log.info("API keys loaded: %d", len(digests))

    async def check(self, headers: list[tuple[bytes, bytes]]) -> str:
        key = _credential(headers, api_key_header=True)
        if key is None:
            raise Unauthorized("this model needs an API key: send Authorization: Bearer <key> or X-API-Key")
        self._refresh()
        presented = _digest(key)
        if not any(hmac.compare_digest(presented, d) for d in self._digests):  # all compared: no early exit
            raise Forbidden("the API key is not valid for this model")
        return "api-key"


@dataclass
class _Answer:
    status: int  # 200, 401 or 403
    reason: str
    until: float


class KubernetesAuth:
    """TokenReview + SubjectAccessReview against the API server, cached per token digest."""

    ALLOWED_TTL, DENIED_TTL, CACHE_SIZE = 10.0, 2.0, 10_000
    #: Reviews under way at once; past it new tokens get 401 + Retry-After (a flood of made-up tokens
    #: must not queue without bound or hammer the API server).
    MAX_PENDING = 64

    #: Called once per review sent to the API server (the app counts them in a metric).
    on_review: Any = None

    def __init__(self, namespace: str, name: str, audience: str, api_url: str | None = None,
                 token_file: Path = SA_DIR / "token", ca_file: Path = SA_DIR / "ca.crt", timeout: float = 5.0) -> None:
        self.namespace, self.name, self.audience = namespace, name, audience
        if api_url is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            api_url = f"https://{host}:{port}" if host else None
        if not api_url:
            raise ValueError("kubernetes auth needs the API server: KUBERNETES_SERVICE_HOST is not set")
        self.api = urlsplit(api_url)
        self.token_file, self.timeout = token_file, timeout
        self.context = ssl.create_default_context(cafile=str(ca_file)) if self.api.scheme == "https" else None
        self._cache: OrderedDict[bytes, _Answer] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[_Answer]] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="auth")

    async def check(self, headers: list[tuple[bytes, bytes]]) -> str:
        token = _credential(headers, api_key_header=False)
        if token is None:
            raise Unauthorized("this model needs a Kubernetes ServiceAccount token for the audience "
                               f"{self.audience!r}: send Authorization: Bearer <token>")
        if not JWT.match(token):  # ServiceAccount tokens are JWTs: anything else is refused without asking
            raise Unauthorized("the bearer token is not a Kubernetes ServiceAccount token (a JWT)")
        key = _digest(token)
        answer = self._cache.get(key)
        if answer is None or answer.until < time.monotonic():
            pending = self._pending.get(key)
            if pending is None and len(self._pending) >= self.MAX_PENDING:
                raise Unverifiable("too many tokens are being verified right now; retry shortly")
            if pending is None:  # one review per token at a time, however many requests carry it
                pending = self._pending[key] = asyncio.ensure_future(self._review(key, token))
                pending.add_done_callback(lambda _: self._pending.pop(key, None))
            answer = await asyncio.shield(pending)
        if answer.status != 200:
            raise (Unauthorized if answer.status == 401 else Forbidden)(answer.reason)
        return "kubernetes"

    async def _review(self, key: bytes, token: str) -> _Answer:
        loop = asyncio.get_running_loop()
        if self.on_review is not None:
            self.on_review()
        try:
            status, reason = await loop.run_in_executor(self._pool, self._ask, token)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("Could not verify a token with the API server: %s", exc)
            raise Unverifiable("the token could not be verified now (the Kubernetes API server did not "
                               "answer); retry shortly") from None
        ttl = self.ALLOWED_TTL if status == 200 else self.DENIED_TTL
        answer = _Answer(status, reason, time.monotonic() + ttl)
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return answer

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        own = self.token_file.read_text().strip()  # re-read: kubelet rotates the projected token
        conn: http.client.HTTPConnection
        if self.context is not None:
            conn = http.client.HTTPSConnection(self.api.hostname or "", self.api.port or 443,
                                               timeout=self.timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.api.hostname or "", self.api.port or 80, timeout=self.timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {own}",
                                                          "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status not in (200, 201):
            raise ValueError(f"{path}: HTTP {response.status}: {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def _ask(self, token: str) -> tuple[int, str]:
        review = self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]}})
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return 401, f"the token is not valid (or not for the audience {self.audience!r})"
        user = status.get("user") or {}
        access = self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username"), "groups": user.get("groups"), "uid": user.get("uid"),
                     "extra": user.get("extra"),
                     "resourceAttributes": {"namespace": self.namespace, "verb": VERB, "group": GROUP,
                                            "resource": RESOURCE, "subresource": SUBRESOURCE,
                                            "name": self.name}}})
        if (access.get("status") or {}).get("allowed"):
            return 200, "allowed"
        return 403, (f"{user.get('username', 'the caller')} may not {VERB} {RESOURCE}/{SUBRESOURCE} "
                       f"{self.name!r} in namespace {self.namespace!r}; bind a Role that grants it")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def from_settings(mode: str, resource: str, audience: str, api_keys_dir: str) -> ApiKeys | KubernetesAuth | None:
    """The guard for `mode`; ValueError with a sentence a person can act on when it cannot work."""
    if mode == "none":
        return None
    if mode == "api-key":
        if not Path(api_keys_dir).is_dir():
            raise ValueError(f"--auth-mode api-key needs the keys directory {api_keys_dir} (a mounted Secret)")
        return ApiKeys(api_keys_dir)
    if mode == "kubernetes":
        namespace, _, name = resource.partition("/")
        if not namespace or not name:
            raise ValueError("--auth-mode kubernetes needs --auth-resource NAMESPACE/NAME")
        # Outside a pod (tests, a laptop), these say where the API server is and what to ask it with.
        token = Path(os.environ.get("MODELPILOT_KUBE_TOKEN_FILE") or SA_DIR / "token")
        ca = Path(os.environ.get("MODELPILOT_KUBE_CA_FILE") or SA_DIR / "ca.crt")
        if not token.is_file():
            raise ValueError(f"--auth-mode kubernetes needs the pod's ServiceAccount token ({token}): give the "
                             "pod a ServiceAccount allowed to create TokenReviews and SubjectAccessReviews")
        try:
            return KubernetesAuth(namespace, name, audience, os.environ.get("MODELPILOT_KUBE_API_URL") or None,
                                  token, ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--auth-mode kubernetes cannot use the API server's CA {ca}: {exc}") from None
    raise ValueError(f"unknown --auth-mode {mode!r}: none, kubernetes or api-key")
