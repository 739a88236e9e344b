"""The Kafka broker and Redis server the tests start: the session's shared pair (tests/conftest.py), and
a test module's own when its tests stop and restart them (tests/test_faults.py).

Free loopback ports, never the `dev up` ones; both stop on leaving the block, also when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.kafka_client import KafkaConnection
from shared.local_infra.kafka_broker import KafkaBroker, SaslSslListener
from shared.local_infra.processes import free_port
from shared.local_infra.readiness import prove_kafka_round_trip
from shared.local_infra.redis_server import RedisServer


@contextmanager
def running_broker(
    data_dir: Path, heap_mb: int = 512, sasl_ssl: SaslSslListener | None = None
) -> Iterator[KafkaBroker]:
    """A broker proven by a produce/consume round trip; `stop()` then `start()` restarts it on the same
    ports and data. With `sasl_ssl` it also serves clients on that listener (tests/test_secure_kafka.py)."""
    broker = KafkaBroker(data_dir, free_port(), free_port(), heap_mb=heap_mb, sasl_ssl=sasl_ssl)
    try:
        broker.start()
        prove_kafka_round_trip(KafkaConnection(broker.bootstrap))
        yield broker
    finally:
        broker.stop()


@contextmanager
def running_redis(data_dir: Path, persistent: bool = False) -> Iterator[RedisServer]:
    """A Redis server; `persistent` (append-only file) keeps its data across `stop()` and `start()`."""
    server = RedisServer(data_dir, free_port(), persistent=persistent)
    try:
        server.start()
        yield server
    finally:
        server.stop()
