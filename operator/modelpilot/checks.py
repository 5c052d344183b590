"""Periodic Prometheus checks of the served version: latency thresholds (thresholds.py) and data drift
(driftcheck.py) share this machinery.

Each check of a ModelDeployment runs every `every` seconds on the outbound thread (one slow Prometheus
delays only the models that use it); a reconcile reads the latest judgement without waiting. A judgement of
another version, or against other settings, says nothing about the current one and is not reported.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from .canary import Verdict
from .config import Settings
from .outbound import Outbound
from .registry import ResolvedModel
from .urls import BaseURL

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: The check itself: (a session to the Prometheus, $namespace/$name/$model/$version) → a verdict.
Run = Callable[[aiohttp.ClientSession, dict[str, str]], Awaitable[Verdict]]
#: How often each ModelDeployment's checks run.
CHECK_SECONDS = 60.0


class Check(Protocol):
    """A check's settings (a frozen dataclass of the spec): compared to tell whether a judgement still holds."""

    @property
    def prometheus(self) -> BaseURL: ...


C = TypeVar("C", bound=Check)


@dataclass(frozen=True)
class Measured:
    version: str
    settings: object
    verdict: Verdict
    at: float


class PeriodicChecks(Generic[C]):
    """The latest judgement of one kind of check per ModelDeployment, refreshed in the background;
    `make_run` turns the check's settings into the check."""

    def __init__(self, kind: str, make_run: Callable[[C], Run], outbound: Outbound, settings: Settings,
                 on_answer: Callable[[Key], None], every: float = CHECK_SECONDS) -> None:
        self.kind = kind
        self.make_run = make_run
        self.outbound = outbound
        self.settings = settings
        self.on_answer = on_answer
        self.every = every
        self._last: dict[Key, Measured] = {}
        self._asked: dict[Key, float] = {}
        self._lock = threading.Lock()

    def latest(self, key: Key, check: C | None, serving: ResolvedModel | None, wall: float,
               ) -> tuple[Verdict | None, float | None]:
        """(the latest verdict for the version now served under `check`'s settings or None, seconds until the
        next check); (None, None) when the check is off or nothing serves."""
        if check is None or serving is None:
            self.forget(key)
            return None, None
        with self._lock:
            last = self._last.get(key)
            asked = self._asked.get(key)
        current = last if last is not None and (last.version, last.settings) == (serving.version, check) else None
        if asked is None and (current is None or wall - current.at >= self.every):
            self._ask(key, check, serving, wall)
        next_check = self.every if current is None else max(self.every - (wall - current.at), 1.0)
        return (current.verdict if current else None), next_check

    def _ask(self, key: Key, check: C, serving: ResolvedModel, wall: float) -> None:
        run, prometheus = self.make_run(check), check.prometheus
        variables = {"namespace": key[0], "name": key[1], "model": serving.name, "version": serving.version}

        async def call(session: aiohttp.ClientSession) -> Verdict:
            return await run(session, variables)

        def answered(done: concurrent.futures.Future[Any]) -> None:
            if done.cancelled():  # the operator is stopping
                return
            error = done.exception()
            verdict = done.result() if error is None else Verdict(
                "inconclusive", f"Prometheus at {prometheus.origin} did not answer in time"
                if isinstance(error, TimeoutError) else f"the check failed ({type(error).__name__})")
            with self._lock:
                if self._asked.pop(key, None) is None:
                    return  # forgotten meanwhile
                self._last[key] = Measured(serving.version, check, verdict, wall)
            log.info("%s of %s/%s version %s: %s (%s)", self.kind.capitalize(), *key, serving.version,
                     verdict.outcome, verdict.message)
            self.on_answer(key)

        with self._lock:
            self._asked[key] = wall
        self.outbound.submit((self.kind, key), prometheus.origin, self.settings.prometheus_timeout_seconds,
                             call, answered)

    def pending(self, key: Key) -> bool:
        """Whether a check of `key` has been asked and not answered yet."""
        with self._lock:
            return key in self._asked

    def forget(self, key: Key) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._asked.pop(key, None)
