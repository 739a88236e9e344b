"""Where the bench runs: the Kafka broker and Redis server it uses, and the machine and versions it reports.

A full run never touches a developer's `dev up` stack: without FLEETWATCH_KAFKA_BOOTSTRAP and
FLEETWATCH_REDIS_URL in the environment, the bench starts its own broker and Redis on free ports and
stops them at the end. The dev stack's connection file is deliberately not read.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import confluent_kafka
import psutil
import redis

from shared.kafka_client import KafkaConnection, admin_client, ensure_topics
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.kafka_jars import jars_dir, kafka_version
from shared.local_infra.processes import free_port
from shared.local_infra.readiness import prove_kafka_round_trip, prove_redis_ping
from shared.local_infra.redis_server import RedisServer

PARTITIONS = 6
"""Input and output topics get as many partitions as the dev stack's, enough for two workers."""


@dataclass
class BenchStack:
    """The broker and Redis of one bench run, and every name the run creates, so they can be removed."""

    kafka: KafkaConnection
    redis_url: str
    redis_prefix: str
    broker_pid: int | None  # None when the broker is not on this machine (its CPU cannot be sampled)
    own_servers: bool
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    created_topics: list[str] = field(default_factory=list)

    def topic(self, role: str, partitions: int = PARTITIONS) -> str:
        """A topic unique to this run: `bench.<run>.<role>`."""
        name = f"bench.{self.run_id}.{role}"
        ensure_topics(self.kafka, [name], partitions=partitions)
        self.created_topics.append(name)
        return name

    def prefix(self, role: str) -> str:
        """A Redis namespace unique to this run and role (registry, profiles)."""
        return f"{self.redis_prefix}bench-{self.run_id}:{role}:"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def clean_up(self) -> None:
        """Delete this run's topics and Redis keys (only matters on servers the bench did not start)."""
        if self.created_topics:
            futures = admin_client(self.kafka).delete_topics(self.created_topics, operation_timeout=30)
            for future in futures.values():
                with contextlib.suppress(confluent_kafka.KafkaException):
                    future.result(timeout=30)
        client = self.redis()
        keys = list(client.scan_iter(match=f"{self.redis_prefix}bench-{self.run_id}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


@contextlib.contextmanager
def bench_stack(work_dir: Path) -> Iterator[BenchStack]:
    """The servers named by the environment, or the bench's own on free ports (stopped on exit)."""
    bootstrap = os.environ.get("FLEETWATCH_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("FLEETWATCH_REDIS_URL")
    prefix = os.environ.get("FLEETWATCH_REDIS_PREFIX", "fleetwatch:")
    if bootstrap and redis_url:
        broker_pid = _loopback_listener_pid(bootstrap)
        stack = BenchStack(KafkaConnection(bootstrap), redis_url, prefix, broker_pid, own_servers=False)
        try:
            yield stack
        finally:
            stack.clean_up()
        return
    servers = Path(tempfile.mkdtemp(prefix="servers-", dir=work_dir))
    broker = KafkaBroker(servers / "kafka", free_port(), free_port(), heap_mb=1024)
    redis_server = RedisServer(servers / "redis", free_port(), persistent=False)
    try:
        broker.start()
        redis_server.start()
        connection = KafkaConnection(broker.bootstrap)
        prove_kafka_round_trip(connection)
        prove_redis_ping(redis_server.url)
        yield BenchStack(connection, redis_server.url, prefix, broker_pid=broker.pid, own_servers=True)
    finally:
        broker.stop()
        redis_server.stop()
        shutil.rmtree(servers, ignore_errors=True)


def _loopback_listener_pid(bootstrap: str) -> int | None:
    """The process listening on a loopback bootstrap address (a broker on this machine), if visible."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost", "[::1]") or not port.isdigit():
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == int(port):
            return connection.pid
    return None


def machine_description() -> dict[str, object]:
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_versions(stack: BenchStack) -> dict[str, object]:
    broker_jars = jars_dir()
    try:
        broker = kafka_version(broker_jars)
    except (StopIteration, OSError):
        broker = None
    return {
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": _package_version("confluent-kafka"),
        # The bench's own broker runs these jars; an external one is only known to be a Kafka broker.
        "kafka_broker": broker if stack.own_servers else f"external (local jars: {broker})",
        "redis_server": str(stack.redis().info("server").get("redis_version")),
        **{
            name: _package_version(name)
            for name in ("numpy", "scikit-learn", "msgspec", "quixstreams", "faust-streaming", "aiokafka", "bytewax")
        },
    }
