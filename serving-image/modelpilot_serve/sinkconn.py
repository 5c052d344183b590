"""One kept-alive HTTP/1.1 connection to the payload-log sink: requests written as prepared bytes, answers
read with a minimal parser.

Why not urllib3 or http.client: the sender keeps to a CPU budget, and per POST urllib3 costs about
190 µs of CPU and http.client about 100 µs on this project's benchmark machine, against about 33 µs
here; the payload log sends two POSTs per request (pipelined: post_many). The sink's answer is only
checked for its status; its body (Content-Length or chunked) is read and dropped so the connection can
be reused; an answer that says `Connection: close`, or anything unexpected, closes the connection and
the next send opens a new one.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

#: The most bytes of a sink's answer (status line, headers, body) that are read.
MAX_ANSWER_BYTES = 64 * 1024


class SinkError(Exception):
    pass


class Closed(SinkError):
    """The sink closed the connection before answering (on a kept-alive connection: it timed it out)."""


class SinkConnection:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host, self.tls = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = (443 if self.tls else 80) == self.port
        self.host_header = host if default else f"{host}:{self.port}"
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._context = ssl.create_default_context() if self.tls else None

    def post(self, headers: dict[str, str], body: bytes) -> int:
        """POST and return the answer's status; raises OSError or SinkError (the connection is then closed)."""
        return self.post_many([(headers, body)])[0]

    def post_many(self, requests: list[tuple[dict[str, str], bytes]]) -> list[int]:
        """POST each (headers, body) in order, pipelined: written at once on the kept-alive connection, the
        answers read in order; returns their statuses. Raises OSError or SinkError (the connection is then
        closed). A kept-alive connection the sink closed meanwhile is retried once on a new one; a sink that
        answers `Connection: close` gets the rest on a new connection."""
        pending = [self._request(headers, body) for headers, body in requests]
        statuses: list[int] = []
        retried = False
        while pending:
            fresh = self._sock is None
            try:
                sock = self._connect()
                sock.sendall(pending[0] if len(pending) == 1 else b"".join(pending))
                while pending and self._sock is not None:
                    statuses.append(self._answer(sock))
                    pending.pop(0)
            except (OSError, SinkError, ValueError) as exc:
                self.close()
                if fresh or retried or not isinstance(exc, OSError | Closed):  # only a stale connection
                    raise
                retried = True
        return statuses

    def _request(self, headers: dict[str, str], body: bytes) -> bytes:
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items() if "\r" not in v and "\n" not in v]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            self._sock, self._buffer = sock, b""
        return self._sock

    def _read_until(self, sock: socket.socket, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if len(self._buffer) > MAX_ANSWER_BYTES:
                raise SinkError("the sink's answer is too large")
            chunk = sock.recv(8192)
            if not chunk:
                raise Closed("the sink closed the connection")
            self._buffer += chunk
        found, self._buffer = self._buffer.split(marker, 1)
        return found

    def _read_exactly(self, sock: socket.socket, n: int) -> None:
        if n > MAX_ANSWER_BYTES:
            raise SinkError("the sink's answer is too large")
        while len(self._buffer) < n:
            chunk = sock.recv(8192)
            if not chunk:
                raise Closed("the sink closed the connection")
            self._buffer += chunk
        self._buffer = self._buffer[n:]

    def _answer(self, sock: socket.socket) -> int:
        lines = self._read_until(sock, b"\r\n\r\n").decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise SinkError(f"not an HTTP answer: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size = int(self._read_until(sock, b"\r\n").split(b";")[0].strip() or b"0", 16)
                self._read_exactly(sock, size + 2)  # the chunk and its CRLF (the last: trailers' end)
                if size == 0:
                    break
        else:
            self._read_exactly(sock, int(headers.get("content-length", "0") or 0))
        if headers.get("connection") == "close" or status_line[0] == "HTTP/1.0":
            self.close()
        return int(status_line[1])

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock, self._buffer = None, b""
