"""The API client's authentication header, against a real HTTP server (what the in-cluster config stores)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import Configuration

from modelpilot.kube import Kube


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.parametrize(("api_key", "sent"), [
    pytest.param({"authorization": "bearer abc.def"}, "Bearer abc.def", id="in-cluster-lower-case"),
    pytest.param({"authorization": "Bearer abc.def"}, "Bearer abc.def", id="kubeconfig-token"),
    pytest.param({"BearerToken": "abc.def"}, "Bearer abc.def", id="bare-token"),
    pytest.param({}, None, id="client-certificate-only"),
])
def test_the_token_is_sent_once_prefixed(recorder: tuple[str, list[str | None]], api_key: dict[str, str],
                                         sent: str | None) -> None:
    url, seen = recorder
    cfg = Configuration()
    cfg.host = url
    cfg.api_key = dict(api_key)
    Kube(cfg).request("GET", "/api")
    assert seen == [sent]
