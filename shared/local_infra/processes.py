"""Detached server processes that outlive the command that started them, and free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def spawn_detached(command: list[str], log_file: Path, cwd: Path) -> int:
    """Start `command` in its own session (so Ctrl-C of the caller does not reach it); return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child we started and that exited stays a zombie until reaped; reap it so it reads as gone.
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    return True


def stop_process(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, wait up to `timeout_s`, then SIGKILL it: nothing is left behind."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_is_alive(pid):
                return
            time.sleep(0.1)


def log_tail(log_file: Path, lines: int = 30) -> str:
    if not log_file.exists():
        return "(no log written)"
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so `with`/`finally` blocks stop the servers and children a
    long run started (a killed benchmark, demo or test session leaves no broker or worker behind)."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
