"""The payload log's HTTP/1.1 connection against sinks that answer in every shape HTTP allows (and some it
does not), over real sockets: scripted answers from a raw TCP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from modelpilot_serve.sinkconn import SinkConnection, SinkError


class ScriptedSink:
    """Answers each request read on a connection with the next scripted bytes; b"CLOSE" closes instead."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/events?x=1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while self.answers:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                answer = self.answers.pop(0)
                if answer == b"CLOSE":
                    return
                conn.sendall(answer)
                if b"connection: close" in answer.lower():
                    return  # as a sink that says so does: the requests after it are never answered

    def stop(self) -> None:
        self.server.close()


@pytest.fixture
def sink() -> Iterator[ScriptedSink]:
    s = ScriptedSink([])
    yield s
    s.stop()


OK = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


def test_requests_are_well_formed_and_answers_of_every_framing_reuse_the_connection(sink: ScriptedSink) -> None:
    sink.answers += [OK, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                     b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n", OK]
    conn = SinkConnection(sink.url, 2)
    assert [conn.post({"ce-id": str(i), "content-type": "application/json"}, b'{"a": %d}' % i)
            for i in range(4)] == [202, 200, 201, 202]
    assert sink.connections == 1, "one kept-alive connection"
    first = sink.requests[0]
    assert first.startswith(b"POST /events?x=1 HTTP/1.1\r\nHost: 127.0.0.1:") and b"ce-id: 0\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a": 0}') and b"Content-Length: 8\r\n" in first


def test_a_sink_that_closes_is_reconnected_once_and_errors_are_raised_not_hidden(sink: ScriptedSink) -> None:
    sink.answers += [OK, b"CLOSE", OK, b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n", OK,
                     b"garbage\r\n\r\n"]
    conn = SinkConnection(sink.url, 2)
    assert conn.post({}, b"1") == 202
    assert conn.post({}, b"2") == 202, "the kept-alive connection was closed: sent again on a new one"
    assert conn.post({}, b"3") == 202 and conn.post({}, b"4") == 202, "Connection: close is honoured"
    assert sink.connections == 3
    with pytest.raises(SinkError, match="not an HTTP answer"):
        conn.post({}, b"5")


def test_header_values_cannot_inject_lines_and_a_silent_sink_times_out(sink: ScriptedSink) -> None:
    sink.answers += [OK]
    conn = SinkConnection(sink.url, 0.5)
    conn.post({"ce-id": "a\r\nX-Evil: 1", "ce-type": "t"}, b"x")
    assert b"X-Evil" not in sink.requests[0] and b"ce-type: t\r\n" in sink.requests[0]
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        with pytest.raises(OSError):
            SinkConnection(f"http://127.0.0.1:{silent.getsockname()[1]}/", 0.5).post({}, b"x")
    finally:
        silent.close()
    with pytest.raises(ValueError, match="not an http"):
        SinkConnection("ftp://x/", 1)


def test_pipelined_posts_are_answered_in_order_and_a_close_midway_sends_the_rest_again(sink: ScriptedSink) -> None:
    sink.answers += [OK, b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno", OK,
                     b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", OK, OK]
    conn = SinkConnection(sink.url, 2)
    assert conn.post_many([({"ce-id": str(i)}, b"%d" % i) for i in range(3)]) == [202, 500, 202]
    assert sink.connections == 1, "three requests written at once on one connection"
    assert conn.post_many([({"ce-id": str(i)}, b"%d" % i) for i in range(3, 6)]) == [202, 202, 202]
    assert sink.connections == 2, "the sink said Connection: close after the first: the rest on a new one"
    ids = [r.split(b"ce-id: ")[1].split(b"\r\n")[0] for r in sink.requests]
    assert ids[:4] == [b"0", b"1", b"2", b"3"] and ids[-2:] == [b"4", b"5"]
