"""The one place that builds confluent-kafka clients.

Every client gets the bootstrap servers plus the user's librdkafka properties unchanged (SASL, TLS,
tuning); a caller's own settings (group id, transactional id) are layered on top.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    properties: Mapping[str, str] = field(default_factory=dict)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap, then the user's properties, then the caller's."""
        return {"bootstrap.servers": self.bootstrap, **self.properties, **overrides}


def admin_client(connection: KafkaConnection) -> AdminClient:
    return AdminClient(connection.config())


def producer(connection: KafkaConnection, **overrides: Any) -> Producer:
    defaults = {"linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True}
    return Producer(connection.config(**{**defaults, **overrides}))


def consumer(connection: KafkaConnection, group_id: str, **overrides: Any) -> Consumer:
    defaults = {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    return Consumer(connection.config(**{**defaults, **overrides}))


def ensure_topics(
    connection: KafkaConnection, names: Iterable[str], partitions: int, timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet (replication 1 locally); return the ones created."""
    admin = admin_client(connection)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=-1) for name in names]
    missing = [topic for topic in wanted if topic.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def topic_partitions(connection: KafkaConnection, topic: str, timeout_s: float = 10.0) -> list[int]:
    metadata = admin_client(connection).list_topics(topic, timeout=timeout_s)
    return sorted(metadata.topics[topic].partitions)


def read_all(connection: KafkaConnection, topic: str, max_wait_s: float = 60.0) -> list[Any]:
    """Every committed record of `topic` from the beginning, stopping once all partitions hit their end.

    A verification and demo tool, not a hot path: it assigns partitions directly (no group rebalance).
    """
    reader = consumer(connection, group_id=f"fleetwatch-reader-{uuid.uuid4().hex}", **{"enable.partition.eof": True})
    try:
        partitions = topic_partitions(connection, topic)
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        records = []
        deadline = time.monotonic() + max_wait_s
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for message in reader.consume(num_messages=1000, timeout=0.5):
                error = message.error()
                if error is None:
                    records.append(message)
                    at_end.discard(message.partition())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(message.partition() or 0))
                else:
                    raise KafkaException(error)
        return records
    finally:
        reader.close()


def produce_all(
    connection: KafkaConnection,
    topic: str,
    keys: list[str],
    payloads: list[bytes],
    on_progress: Callable[[int], None] = lambda done: None,
    report_every: int = 20_000,
) -> int:
    """Produce every payload (keyed) and wait for all acknowledgements; return how many failed."""
    failures = 0

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        nonlocal failures
        if error is not None:
            failures += 1

    writer = producer(connection, **{"linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000})
    # confluent-kafka has no batch produce call; this loop is the client's own idiom for bulk writes.
    for index, (key, payload) in enumerate(zip(keys, payloads, strict=True), start=1):
        while True:
            try:
                writer.produce(topic, value=payload, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                writer.poll(0.05)
        if index % report_every == 0:
            writer.poll(0)
            on_progress(report_every)
    remaining = writer.flush(120)
    on_progress(len(payloads) % report_every)
    return failures + remaining
