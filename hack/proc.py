"""Local processes and polling: the small supervision layer every local service here is built on.

Each service keeps its pid files and logs under its own directory (see `hack.layout`); `Processes`
starts a child in its own session (so stopping it stops its children), stops it by pid file, and
reads its log for error messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
def log(msg: str) -> None:
    print(f"[devenv] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(interval)
    detail = f" (last error: {last})" if last else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_answers(url: str, ok: tuple[int, ...] = (200,)) -> bool:
    """Whether a local HTTP service answers `url` with one of the `ok` statuses."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status in ok
    except urllib.error.HTTPError as exc:
        return exc.code in ok
    except OSError:
        return False




def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Processes:
    """Processes started in their own sessions, remembered in pid files so another command can stop them."""

    def __init__(self, state: Path) -> None:
        self.state = state
        (state / "pids").mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logf = open(self.state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
        (self.state / "pids" / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def alive(self, name: str) -> bool:
        pidfile = self.state / "pids" / f"{name}.pid"
        return pidfile.exists() and pid_alive(int(pidfile.read_text()))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        pidfile = self.state / "pids" / f"{name}.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        pidfile.unlink(missing_ok=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.state / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
