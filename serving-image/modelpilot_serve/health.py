"""Probes answered by a small process of their own, from heartbeats the server workers write.

Why a process: the workers' event loops only move bytes, but a C extension holding the GIL (orjson
parsing a 10 MB body takes ~0.3 s; a model's predict may take longer) stalls every thread of that
process, the loop included. A kubelet probing the worker itself then sees timeouts under ordinary
batch traffic and restarts a healthy pod. This process shares no GIL with them: it answers in
microseconds whatever they are doing, and reports what their heartbeats say.

Each worker writes `<dir>/worker-<pid>`: the time of its last loop turn and whether it is ready. A
worker whose loop has not turned for `READY_STALE_SECONDS` is not ready; with no worker turning for
`LIVE_STALE_SECONDS` the server is not live (the kubelet then restarts it, rightly: it is wedged).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

READY_STALE_SECONDS = 5.0
LIVE_STALE_SECONDS = 30.0
#: Worker files not written for this long belong to workers that are gone.
GONE_SECONDS = 60.0
_RECORD = struct.Struct("<d?")


class Heartbeat:
    """Written by a server worker (on its event loop) a few times a second."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"worker-{os.getpid()}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def beat(self, ready: bool) -> None:
        os.pwrite(self._fd, _RECORD.pack(time.time(), ready), 0)

    def close(self) -> None:
        self.beat(False)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Worker:
    age: float
    ready: bool


def _alive(pid: int) -> bool:
    """Whether `pid` exists (hack/proc.py's pid_alive is outside this distribution)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    return True


def read_workers(directory: Path, now: float) -> list[Worker]:
    workers = []
    for path in directory.glob("worker-*"):
        pid = path.name.removeprefix("worker-")
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)  # a worker that died (uvicorn starts another): not ours to wait for
            continue
        try:
            beat, ready = _RECORD.unpack(path.read_bytes()[:_RECORD.size])
        except (OSError, struct.error):
            continue
        if now - beat < GONE_SECONDS:
            workers.append(Worker(max(0.0, now - beat), ready))
    return workers


def verdict(workers: list[Worker]) -> tuple[bool, bool, str]:
    """(live, ready, why) from the workers' heartbeats. Pure."""
    if not workers:
        return True, False, "the server is starting"
    freshest = min(w.age for w in workers)
    live = freshest < LIVE_STALE_SECONDS
    stalled = [w for w in workers if w.age >= READY_STALE_SECONDS]
    if stalled:
        return live, False, f"a worker's event loop has not turned for {max(w.age for w in stalled):.0f}s"
    if not all(w.ready for w in workers):
        return live, False, "the model is not loaded yet, or the server is shutting down"
    return live, True, "ready"


def answer(path: str, workers: list[Worker]) -> tuple[int, bytes]:
    live, ready, why = verdict(workers)
    if path in ("/v2/health/live", "/livez"):
        return (200, b'{"live":true}') if live else (503, orjson.dumps({"live": False, "message": why}))
    if path in ("/v2/health/ready", "/readyz"):
        return (200, b'{"ready":true}') if ready else (503, orjson.dumps({"ready": False, "message": why}))
    return 404, b'{"message":"no such probe; use /v2/health/live or /v2/health/ready"}'


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, directory: Path) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=2)
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0].decode("latin-1")
        status, body = answer(path, read_workers(directory, time.time()))
        if method not in (b"GET", b"HEAD"):
            status, body = 405, b'{"message":"use GET"}'
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + (body if method == b"GET" else b""))
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, directory: Path, parent: int) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, directory), host, port, limit=8192)
    async with server:
        while os.getppid() == parent:  # the scoring server is gone: so are we
            await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modelpilot-serve-health")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.dir, args.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
