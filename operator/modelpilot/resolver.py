"""Model resolution: the one place that asks a registry, with its cache, credentials and backoff.

Each (ModelDeployment, track) keeps its last answer until `refreshInterval` has passed (or, after a
failure, until its backoff has). A due resolution is a call on the `outbound` thread: the reconcile
waits a moment for it and otherwise goes on with what it knew; the answer re-enqueues the key. So a
slow registry never holds a reconcile worker, and identical questions asked at once (same registry,
URI and credentials) share one call.

Answers are shared (see answers.py): a ModelDeployment takes a successful answer to the same
question that is younger than its own refresh interval, and once it has an answer it *follows* the
question: the refresher (`refresh_due`, run every second by the operator) asks each followed
question again when due and enqueues its followers only when the answer changed or the registry
failed. So while nothing moves, refreshes cost one registry call per question and no reconcile.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from . import metrics
from .answers import TRACKS, Answers, Question
from .config import Settings
from .observe import Problem
from .outbound import Outbound, wait
from .registry import Credentials, Registry, RegistryError, RegistryUnreachable, ResolvedModel
from .spec import DeploymentSpec
from .uri import ModelRef

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
SecretReader = Callable[[str, str], dict[str, str] | None]
Identity = tuple[str, str, str | None]


class CredentialsInvalid(RegistryError):
    """The credentials Secret is missing or holds neither a token nor a username."""

    reason = "CredentialsSecretInvalid"
    transient = False


@dataclass(frozen=True)
class Resolution:
    """What the operator last learned from the registry for one URI of one ModelDeployment."""

    #: (model URI, tracking URL, Secret name): a change forces a new answer.
    identity: Identity
    resolved: ResolvedModel | None
    problem: Problem | None
    #: monotonic time at which the next resolution is due.
    next_at: float
    failures: int = 0
    #: An answer is being fetched; `resolved`/`problem` are the previous ones.
    pending: bool = False
    #: monotonic time of the answer `resolved` came from (0: none yet).
    at: float = 0.0
    #: What made the operator ask for that answer: "lookup" (a reconcile), "poll" or "webhook".
    via: str = "lookup"


@dataclass
class _Entry:
    resolution: Resolution
    future: concurrent.futures.Future[Any] | None = None


def backoff(base: float, failures: int, cap: float) -> float:
    """base · 2^(failures-1), capped; never overflows however many failures."""
    return min(base * 2.0 ** min(max(failures - 1, 0), 30), cap)


class Resolver:
    def __init__(self, outbound: Outbound, settings: Settings, read_secret: SecretReader,
                 on_answer: Callable[[Key], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.outbound = outbound
        self.settings = settings
        self.read_secret = read_secret
        self.on_answer = on_answer
        self.clock = clock
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self.answers = Answers(clock, on_answer)
        self._lock = threading.Lock()
        #: True while a refresher keeps followed answers fresh (start_refresher; tests call refresh_due).
        self.refreshing = False
        self._stop = threading.Event()
        #: Set by `expedite`: the refresher looks at once instead of at its next tick.
        self._wake = threading.Event()

    def credentials(self, namespace: str, spec: DeploymentSpec) -> Credentials | None:
        if not spec.credentials_secret:
            return None
        data = self.read_secret(namespace, spec.credentials_secret)
        if data is None:
            if spec.credentials_required:
                raise CredentialsInvalid(
                    f"Secret {spec.credentials_secret!r} named in spec.registry.credentialsSecretRef "
                    f"does not exist in namespace {namespace!r}")
            return None
        creds = Credentials(token=data.get("token") or None, username=data.get("username") or None,
                            password=data.get("password") or None)
        if not creds.token and not creds.username:
            raise CredentialsInvalid(f"Secret {spec.credentials_secret!r} has neither a 'token' key nor "
                                     "'username'/'password' keys")
        return creds

    def lookup(self, key: Key, track: str, spec: DeploymentSpec, uri: str, ref: ModelRef) -> Resolution:
        """The cached answer while it is fresh; else ask (at most once per interval), briefly waiting.

        The credentials Secret is read only when the registry is asked: a fresh answer costs no API call.
        """
        entry_key = (*key, track)
        now = self.clock()
        identity = (uri, spec.tracking_uri, spec.credentials_secret)
        with self._lock:
            entry = self._entries.get(entry_key)
        if entry is not None and entry.resolution.identity != identity:
            entry = None
        question = _question(key[0], spec, uri)
        if entry is None or entry.future is None:
            shared = self.answers.fresh(question, spec.refresh_seconds)
            if (entry is not None and now < entry.resolution.next_at
                    and (shared is None or shared[1] <= entry.resolution.at)):
                return entry.resolution  # ours is fresh, and nobody learned anything since
            if shared is not None:
                # someone asked the same question recently enough (the refresher, another follower)
                result = Resolution(identity, shared[0], None, shared[1] + spec.refresh_seconds, at=shared[1],
                                    via=shared[2])
                with self._lock:
                    self._entries[entry_key] = _Entry(result)
                self.answers.follow((key, track), question, spec.refresh_seconds, (key[0], spec, uri, ref))
                return result
        if entry is not None and entry.future is not None:
            future = entry.future
        else:
            try:
                creds = self.credentials(key[0], spec)
            except RegistryError as exc:
                return self._record(entry_key, identity, None, exc, spec, now, question)
            future = self._ask(key, entry_key, identity, spec, ref, creds)
        if not wait(future, self.settings.outbound_wait_seconds):
            previous = entry.resolution if entry is not None else Resolution(identity, None, None, now)
            pending = replace(previous, pending=True, next_at=now + self.settings.registry_timeout_seconds)
            with self._lock:
                self._entries[entry_key] = _Entry(pending, future)
            return pending
        error = future.exception()
        if isinstance(error, TimeoutError):
            error = RegistryUnreachable(f"the registry at {spec.tracking.origin} did not answer within "
                                        f"{self.settings.registry_timeout_seconds:g}s")
        if error is not None and not isinstance(error, RegistryError):
            log.error("Resolving %s for %s/%s failed unexpectedly: %r", uri, *key, error)
            error = RegistryUnreachable(f"resolving failed unexpectedly ({type(error).__name__})")
        result = self._record(entry_key, identity, None if error else future.result(), error, spec, now, question)
        if result.problem is None:
            self.answers.follow((key, track), question, spec.refresh_seconds, (key[0], spec, uri, ref))
        return result

    def _ask(self, key: Key, entry_key: tuple[str, str, str], identity: Identity, spec: DeploymentSpec,
             ref: ModelRef, creds: Credentials | None) -> concurrent.futures.Future[Any]:
        def answered(future: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                entry = self._entries.get(entry_key)
            if entry is not None and entry.future is future:
                self.on_answer(key)

        return self._call(identity, spec, ref, creds, answered)

    def _call(self, identity: Identity, spec: DeploymentSpec, ref: ModelRef, creds: Credentials | None,
              done: Callable[[concurrent.futures.Future[Any]], None]) -> concurrent.futures.Future[Any]:
        """One resolution on the outbound thread. Identical questions in flight share one call; never
        across credentials (an answer is only for whoever could have asked for it)."""
        tracking = spec.tracking

        async def call(session: aiohttp.ClientSession) -> ResolvedModel:
            metrics.REGISTRY_CALLS.labels(host=tracking.origin).inc()
            return await Registry(tracking, creds, session).resolve(ref)

        flight = ("registry", identity, _digest(creds))
        return self.outbound.submit(flight, tracking.origin, self.settings.registry_timeout_seconds, call, done)

    def _record(self, entry_key: tuple[str, str, str], identity: Identity,
                resolved: ResolvedModel | None, error: BaseException | None, spec: DeploymentSpec,
                now: float, question: Question) -> Resolution:
        with self._lock:
            entry = self._entries.get(entry_key)
        previous = entry.resolution if entry is not None and entry.resolution.identity == identity else None
        if error is None:
            assert resolved is not None
            result = Resolution(identity, resolved, None, now + spec.refresh_seconds, at=now)
            self.answers.put(question, resolved, now)
        else:
            assert isinstance(error, RegistryError)
            failures = (previous.failures if previous else 0) + 1
            delay = (backoff(self.settings.retry_base_seconds, failures, spec.refresh_seconds)
                     if error.transient else spec.refresh_seconds)
            keep = previous.resolved if previous else None
            result = Resolution(identity, keep, Problem(error.reason, str(error)), now + delay, failures,
                                at=previous.at if previous else 0.0)
            metrics.REGISTRY_ERRORS.labels(host=spec.tracking.origin, reason=error.reason).inc()
            log.warning("Resolving %s for %s/%s failed (%s), retrying in %.0fs", identity[0], entry_key[0],
                        entry_key[1], error.reason, delay)
        with self._lock:
            self._entries[entry_key] = _Entry(result)
        return result

    # -- the refresher: followed questions asked again when due ------------------------------------
    def refresh_due(self) -> int:
        """Ask every followed question whose answer is due (answers arrive on the outbound thread)."""
        due = self.answers.due()
        for question, (namespace, spec, uri, ref) in due:
            try:
                creds = self.credentials(namespace, spec)
            except RegistryError:
                self.answers.answered(question, None)
                continue
            def done(future: concurrent.futures.Future[Any], question: Question = question) -> None:
                ok = not future.cancelled() and future.exception() is None
                self.answers.answered(question, future.result() if ok else None)

            self._call((uri, spec.tracking_uri, spec.credentials_secret), spec, ref, creds, done)
        return len(due)

    def expedite(self, model: str) -> int:
        """A webhook said `model`'s aliases moved: every followed question about it is asked now, without
        waiting for the refresher's next look (returns how many)."""
        hits = self.answers.expedite(model)
        if hits:
            self._wake.set()
        return hits

    def start_refresher(self, every: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self._wake.wait(every)  # once a second, or at once when a webhook expedites
                self._wake.clear()
                if self._stop.is_set():
                    break
                try:
                    self.refresh_due()
                except Exception:
                    log.exception("Refreshing registry answers failed")

        self.refreshing = True
        threading.Thread(target=run, name="refresher", daemon=True).start()

    def stop_refresher(self) -> None:
        self._stop.set()
        self._wake.set()

    def following(self, key: Key, track: str) -> bool:
        """Whether this ModelDeployment's answer for `track` is kept fresh by the refresher."""
        return self.refreshing and self.answers.follows((key, track))

    def forget(self, key: Key) -> None:
        with self._lock:
            for track in TRACKS:
                self._entries.pop((*key, track), None)
        self.answers.unfollow(key)


def _question(namespace: str, spec: DeploymentSpec, uri: str) -> Question:
    scope = (namespace, spec.credentials_secret) if spec.credentials_secret else None
    return (spec.tracking_uri, uri, scope)


def _digest(creds: Credentials | None) -> str:
    if creds is None:
        return ""
    text = "\0".join(v or "" for v in (creds.token, creds.username, creds.password))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
