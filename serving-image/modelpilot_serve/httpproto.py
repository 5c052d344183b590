"""uvicorn's httptools protocol with the limits an endpoint open to a cluster's clients needs.

- header size: request line + headers over `max_header_bytes` → 431, connection closed;
- header read timeout: a connection whose request headers are not complete `header_timeout` seconds
  after its first byte (or after it opened, for one that sends nothing) → 408 and closed;
- connection cap: past `max_connections` open connections a new one gets 503 with Retry-After at once
  and is closed (the probe process answers the kubelet on its own port, so this never fails a probe).
Idle keep-alive connections are closed by uvicorn's `timeout_keep_alive`; the body phase is covered by
the request deadline (the app answers 408 when it runs out while the body is still arriving).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import HeadersTooLarge, Overloaded, RequestTimeout, ServingError

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class Limits:
    max_header_bytes = 64 * 1024
    header_timeout = 10.0
    max_connections = 1000


class _Refused(Exception):
    pass


def response(error: ServingError) -> bytes:
    """The raw HTTP answer for an error refused before the app sees the request (then closed)."""
    body = error.body()
    extra = b"".join(b"%s: %s\r\n" % header for header in error.headers)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
            % (error.status, REASONS[error.status], len(body), extra)) + body


class GuardedHttpTools(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refusal: ServingError | None = None
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > Limits.max_connections:
            transport.write(response(Overloaded(f"over {Limits.max_connections} connections; retry shortly")))
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(Limits.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(response(RequestTimeout(f"the request headers took over {Limits.header_timeout:g}s")))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > Limits.max_header_bytes:
            self._refusal = HeadersTooLarge(f"the request line and headers are over {Limits.max_header_bytes} bytes")
            raise _Refused()

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._arm_header_timer()  # also for the next request of a keep-alive connection
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            return super().send_400_response(msg)
        self.transport.write(response(self._refusal))
        self.transport.close()


def configure(**limits: Any) -> None:
    for key, value in limits.items():
        setattr(Limits, key, value)


__all__ = ["GuardedHttpTools", "Limits", "configure", "httptools"]
