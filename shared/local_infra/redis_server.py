"""A real Redis server (Debian's `redis-server`) on loopback, with its data in a project folder; or a local
Redis Cluster of such servers."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.errors import FleetwatchError
from shared.local_infra.processes import free_port, log_tail, pid_is_alive, port_is_open, spawn_detached, stop_process


class RedisServerError(FleetwatchError):
    pass


@dataclass
class RedisServer:
    data_dir: Path
    port: int
    persistent: bool = True
    cluster: bool = False
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
            *(("--cluster-enabled", "yes", "--cluster-config-file", str(self.data_dir / "nodes.conf"))
              if self.cluster else ()),
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


CLUSTER_BUS_OFFSET = 10000
"""Redis Cluster nodes talk to each other on their port + 10000."""


@dataclass
class RedisCluster:
    """A local Redis Cluster of masters only (each a `RedisServer` in cluster mode), slots spread evenly."""

    data_dir: Path
    ports: list[int]
    servers: list[RedisServer] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, data_dir: Path, nodes: int = 3) -> RedisCluster:
        """Nodes on free ports whose cluster bus ports (port + 10000) are free too."""
        ports: list[int] = []
        while len(ports) < nodes:
            port = free_port()
            if port + CLUSTER_BUS_OFFSET <= 65535 and not port_is_open(port + CLUSTER_BUS_OFFSET) and port not in ports:
                ports.append(port)
        return cls(data_dir, ports)

    @property
    def url(self) -> str:
        """The form `fleetwatch` reads as a cluster: any node is a start-up node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node, assign the 16384 slots, join them, and return once the cluster says ok."""
        self.servers = [
            RedisServer(self.data_dir / f"node-{port}", port, persistent=False, cluster=True) for port in self.ports
        ]
        for server in self.servers:
            server.start()
        clients = [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]
        bounds = [round(i * 16384 / len(clients)) for i in range(len(clients) + 1)]
        for client, low, high in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER ADDSLOTSRANGE", low, high - 1)
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [client.execute_command("CLUSTER INFO") for client in clients]
            if all(_cluster_field(info, "cluster_state") == "ok" for info in states) and all(
                _cluster_field(info, "cluster_known_nodes") == str(len(clients)) for info in states
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RedisServerError(f"the local Redis Cluster did not reach state ok within {timeout_s:.0f}s")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _cluster_field(info: object, name: str) -> str:
    """One field of CLUSTER INFO, which redis-py hands back parsed (a dict) or raw (text)."""
    if isinstance(info, dict):
        return str(info.get(name, ""))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""
