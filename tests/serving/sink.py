"""A payload-log sink as a consumer would run it: its own process, plain HTTP, one JSON line per event.

    python -m tests.serving.sink --port P --out events.jsonl [--delay SECONDS]

Each line: the CloudEvents headers (ce-*), the content type and the body (text). `--delay` makes it
slow (every event waits that long before its 202), to fill the server's queue.
"""

from __future__ import annotations

import argparse
import http.server
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    out = args.out.open("a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the sender's events come in order on one connection

        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(args.delay)
            event = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")}
            out.write(json.dumps({"headers": event, "content_type": self.headers.get("Content-Type"),
                                  "body": body.decode(errors="replace")}) + "\n")
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
