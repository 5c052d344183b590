"""Outbound HTTP calls to tenant-chosen servers (registries, Prometheus), off the reconcile workers.

Why: a registry or Prometheus URL is written by a tenant. A server that answers slowly, or trickles
one byte at a time, must neither hold a reconcile worker (every namespace shares them) nor outlive
its deadline. So every call:
- runs as a coroutine on this module's own event loop thread (not kopf's, which answers probes);
- has a *total* deadline (aiohttp's `total` timeout: connect, headers and body together);
- waits behind a per-host limit, so many ModelDeployments pointing at one slow host queue behind
  each other instead of in front of everybody else;
- is single-flight: identical requests in flight share one call and one answer.
A reconcile submits work, waits a moment for a quick answer, and otherwise returns; the `done`
callback re-enqueues the ModelDeployments that wait for the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import aiohttp

log = logging.getLogger(__name__)

T = TypeVar("T")
CallFactory = Callable[[aiohttp.ClientSession], Awaitable[Any]]


class Outbound:
    """One event loop thread with a pooled aiohttp session, per-host limits and single-flight calls."""

    def __init__(self, per_host: int = 2, total_connections: int = 100) -> None:
        self.per_host = per_host
        self.total_connections = total_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, concurrent.futures.Future[Any]] = {}
        self._hosts: dict[str, asyncio.Semaphore] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Outbound:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbound", daemon=True)
            self._thread.start()
            self._ready.wait(10)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop

        async def open_session() -> None:
            # No cookie jar (a tenant's server must not set cookies another tenant's call would send),
            # no environment proxies, and a connection pool shared by all calls.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                connector=aiohttp.TCPConnector(limit=self.total_connections, limit_per_host=self.per_host))

        loop.run_until_complete(open_session())
        self._ready.set()
        loop.run_forever()

    def stop(self) -> None:
        loop, session = self._loop, self._session
        if loop is None:
            return
        if session is not None:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None
        self._loop = None

    # -- calls -----------------------------------------------------------------------------------
    def submit(self, key: Hashable, host: str, deadline: float, call: CallFactory,
               done: Callable[[concurrent.futures.Future[Any]], None] | None = None,
               ) -> concurrent.futures.Future[Any]:
        """Run `call(session)` within `deadline` seconds (once for identical `key`s in flight).

        The returned future holds the call's result, or its exception (TimeoutError at the deadline).
        `done` runs (on the outbound thread) when the call finishes.
        """
        if self._loop is None:
            self.start()
        assert self._loop is not None
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = asyncio.run_coroutine_threadsafe(self._guarded(key, host, deadline, call), self._loop)
                self._inflight[key] = future
        if done is not None:
            future.add_done_callback(done)
        return future

    async def _guarded(self, key: Hashable, host: str, deadline: float, call: CallFactory) -> Any:
        try:
            semaphore = self._hosts.setdefault(host, asyncio.Semaphore(self.per_host))
            async with semaphore:
                assert self._session is not None
                async with asyncio.timeout(deadline):
                    return await call(self._session)
        finally:
            with self._lock:
                self._inflight.pop(key, None)


def wait(future: concurrent.futures.Future[T], seconds: float) -> bool:
    """Whether `future` finished within `seconds` (its exception, if any, is left in it)."""
    try:
        future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        return future.done()
    except Exception:
        return True
    return True


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
