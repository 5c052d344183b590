"""A tiny MLflow registry over real HTTP on 127.0.0.1, for fast tests (the real one: tests/registry).

It answers the four read calls the operator makes from a dict of aliases, records every request
with its Authorization header, and can be told to fail, to answer like some other web server, or to
trickle its answer one byte at a time.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from typing import Any


class FakeMlflow:
    def __init__(self) -> None:
        self.aliases: dict[tuple[str, str], str] = {}
        #: version → creation_timestamp (ms); unset versions were registered on 2026-11-01T00:00:00Z
        self.registered: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path with query, Authorization)
        #: "ok" | "down" (503) | "html" (404 page with a secret in it) | "trickle"
        self.mode = "ok"
        self.trickle_seconds = 1.0
        #: Whether get-latest-versions is answered (a registry without stages, e.g. Unity Catalog, does not)
        self.latest = True
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.aliases[(model, alias)] = version

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self.requests.append((h.path, h.headers.get("Authorization")))
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        if self.mode == "down":
            return self._send(h, 503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down"}')
        if self.mode == "html":
            return self._send(h, 404, b"<html>internal admin page: password=hunter2</html>", "text/html")
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        name = query.get("name", "")
        known = {*self.aliases.values(), *self.registered}
        if url.path.endswith("/registered-models/alias"):
            version = self.aliases.get((name, query.get("alias", "")))
        elif url.path.endswith("/model-versions/get") or url.path.endswith("/model-versions/get-download-uri"):
            version = query.get("version") if query.get("version") in known else None
        elif url.path.endswith("/registered-models/get-latest-versions") and self.latest:
            newest = max(known, key=int) if known else None
            return self._send(h, 200, json.dumps({"model_versions": [self._version(name, newest)]} if newest
                                                 else {}).encode())
        else:
            return self._send(h, 404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "no"}')
        if version is None:
            return self._send(h, 404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                                  "message": f"{name} not found"}).encode())
        if url.path.endswith("get-download-uri"):
            body = {"artifact_uri": f"mlflow-artifacts:/models/{name}/{version}"}
        else:
            body = {"model_version": self._version(name, version)}
        self._send(h, 200, json.dumps(body).encode())

    def _version(self, name: str, version: str) -> dict[str, Any]:
        return {"name": name, "version": version, "status": "READY", "run_id": "r" * 32,
                "source": f"models:/m-{version}", "creation_timestamp": self.registered.get(version, 1_793_491_200_000)}

    def _send(self, h: http.server.BaseHTTPRequestHandler, code: int, body: bytes,
              content_type: str = "application/json") -> None:
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.mode != "trickle":
            h.wfile.write(body)
            return
        for i in range(len(body)):
            try:
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
            except OSError:
                return
            time.sleep(self.trickle_seconds)
