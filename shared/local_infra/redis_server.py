"""A real Redis server (Debian's `redis-server`) on loopback, with its data in a project folder."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from shared.errors import FleetwatchError
from shared.local_infra.processes import log_tail, pid_is_alive, spawn_detached, stop_process


class RedisServerError(FleetwatchError):
    pass


@dataclass
class RedisServer:
    data_dir: Path
    port: int
    persistent: bool = True
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server and return once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("'redis-server' is not installed; run bin/setup (apt-get install redis-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
        ]  # fmt: skip
        self.pid = spawn_detached(command, self.log_file, self.data_dir)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_is_alive(self.pid):
                raise RedisServerError(f"redis-server exited during start-up:\n{log_tail(self.log_file)}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer PING within {timeout_s:.0f}s")

    def is_running(self) -> bool:
        return self.pid is not None and pid_is_alive(self.pid)

    def stop(self) -> None:
        if self.pid is not None:
            stop_process(self.pid)
            self.pid = None
