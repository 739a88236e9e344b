"""`fleetwatch dev up|status|down`: the local Kafka + Redis, with its state in one project folder.

`up` writes `connection.env` (shell-sourceable `FLEETWATCH_KAFKA_BOOTSTRAP=` and `FLEETWATCH_REDIS_URL=`
lines) into the folder, where every other command's settings pick it up.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.config import CONNECTION_FILE_NAME, FleetwatchSettings, dev_dir
from shared.errors import FleetwatchError
from shared.kafka_client import KafkaConnection, ensure_topics
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.processes import pid_is_alive, port_is_open, stop_process
from shared.local_infra.readiness import prove_kafka_round_trip, prove_redis_ping
from shared.local_infra.redis_server import RedisServer
from shared.streams.catalog import CATALOG

STATE_FILE_NAME = "stack.json"


class DevStackError(FleetwatchError):
    pass


@dataclass(frozen=True)
class StackStatus:
    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int | None
    redis_pid: int | None
    kafka_running: bool
    redis_running: bool

    def connection_lines(self) -> str:
        return f"FLEETWATCH_KAFKA_BOOTSTRAP={self.kafka_bootstrap}\nFLEETWATCH_REDIS_URL={self.redis_url}\n"


def _state_file() -> Path:
    return dev_dir() / STATE_FILE_NAME


def _read_state() -> dict | None:
    path = _state_file()
    return json.loads(path.read_text()) if path.exists() else None


def status() -> StackStatus | None:
    state = _read_state()
    if state is None:
        return None
    return StackStatus(
        kafka_bootstrap=state["kafka_bootstrap"],
        redis_url=state["redis_url"],
        kafka_pid=state["kafka_pid"],
        redis_pid=state["redis_pid"],
        kafka_running=pid_is_alive(state["kafka_pid"]),
        redis_running=pid_is_alive(state["redis_pid"]),
    )


def up(settings: FleetwatchSettings) -> StackStatus:
    """Start Kafka and Redis (or reuse the running ones), prove both with round trips, create the topics."""
    current = status()
    if current is not None and current.kafka_running and current.redis_running:
        stack = current
    else:
        if current is not None:
            down(purge=False)
        for port in (settings.dev.kafka_port, settings.dev.controller_port, settings.dev.redis_port):
            if port_is_open(port):
                raise DevStackError(f"port {port} on 127.0.0.1 is taken; set FLEETWATCH_DEV__*_PORT to others")
        folder = dev_dir()
        broker = KafkaBroker(
            folder / "kafka",
            settings.dev.kafka_port,
            settings.dev.controller_port,
            settings.dev.kafka_heap_mb,
        )
        redis_server = RedisServer(folder / "redis", settings.dev.redis_port, persistent=True)
        redis_server.start()
        try:
            broker.start()
        except Exception:
            redis_server.stop()
            raise
        assert broker.pid is not None and redis_server.pid is not None
        stack = StackStatus(broker.bootstrap, redis_server.url, broker.pid, redis_server.pid, True, True)
        _state_file().write_text(
            json.dumps(
                {
                    "kafka_bootstrap": stack.kafka_bootstrap,
                    "redis_url": stack.redis_url,
                    "kafka_pid": stack.kafka_pid,
                    "redis_pid": stack.redis_pid,
                },
                indent=2,
            )
        )
        (dev_dir() / CONNECTION_FILE_NAME).write_text(stack.connection_lines())
    connection = KafkaConnection(stack.kafka_bootstrap, settings.kafka_properties)
    prove_redis_ping(stack.redis_url)
    prove_kafka_round_trip(connection)
    # Every catalog stream's default topics too, so any stream can be served locally without creating topics by hand.
    defaults = [topic for stream in CATALOG.values() for topic in (stream.topics.input, stream.topics.summary)]
    topics = list(dict.fromkeys([*settings.all_topics(), *defaults]))
    ensure_topics(connection, topics, partitions=settings.dev.partitions)
    return stack


def down(purge: bool) -> list[str]:
    """Stop what `up` started; with `purge`, remove the whole data folder. Return what was done."""
    done = []
    state = _read_state()
    if state is not None:
        for name in ("kafka", "redis"):
            pid = state[f"{name}_pid"]
            if pid_is_alive(pid):
                stop_process(pid, timeout_s=20.0)
                done.append(f"stopped {name} (pid {pid})")
        _state_file().unlink()
        (dev_dir() / CONNECTION_FILE_NAME).unlink(missing_ok=True)
    if purge and dev_dir().exists():
        shutil.rmtree(dev_dir())
        done.append(f"removed {dev_dir()}")
    return done
