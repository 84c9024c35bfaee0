"""Real servers for the integration tests, started as subprocesses on 127.0.0.1 and
always stopped: `running_server` starts a command in its own process group (a webserver
starts children of its own: a code server, run workers, uvicorn workers), waits until an
HTTP endpoint answers, and on exit sends SIGTERM to the group, then SIGKILL if it has not
gone within a grace period. The server's output goes to a log file whose tail `log()`
gives for failure messages."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 600   # a ceiling for a loaded machine, not a performance limit
STOP_GRACE_S = 30


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self, n: int = 8000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- server log ({self.log_path}), last {n} chars:\n{text[-n:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None


def listening_on(server: Server) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the server and its children listen on."""
    import psutil

    root = psutil.Process(server.proc.pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
    return found


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # children that outlived the leader (the group id is the leader's pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(cmd: list[str], ready_path: str, port: int, log_path: Path, env: dict,
                   cwd: str | Path) -> Iterator[Server]:
    """Start `cmd`, wait until GET http://127.0.0.1:<port><ready_path> answers 200, yield
    the Server, and stop it (with everything it started) when the block ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc=proc, url=f"http://{HOST}:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if not server.alive():
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} before answering\n{server.log()}")
            try:
                if requests.get(server.url + ready_path, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not answer on {server.url}{ready_path}\n{server.log()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


def wait_for(predicate, what: str, server: Server, timeout_s: float = STARTUP_TIMEOUT_S, every_s: float = 1.0):
    """Poll predicate() until it returns something truthy; fail with the server log on a
    timeout or when the server died."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if not server.alive():
            raise AssertionError(f"the server died while waiting for {what}\n{server.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{server.log()}")
        time.sleep(every_s)
