"""Readiness proven by real round trips, never by sleeping."""

from __future__ import annotations

import time
import uuid

import redis
from confluent_kafka import TopicPartition

from shared.errors import FleetwatchError
from shared.kafka_client import KafkaConnection, consumer, ensure_topics, producer

READINESS_TOPIC = "_fleetwatch.readiness"


class NotReadyError(FleetwatchError):
    pass


def prove_kafka_round_trip(connection: KafkaConnection, timeout_s: float = 60.0) -> float:
    """Create a topic, produce a unique record, consume it back; return the seconds it took."""
    started = time.monotonic()
    ensure_topics(connection, [READINESS_TOPIC], partitions=1, timeout_s=timeout_s)
    token = uuid.uuid4().hex.encode()
    # Not idempotent: the broker's producer-id coordinator may still be loading, which is not our question.
    writer = producer(connection, **{"enable.idempotence": False})
    writer.produce(READINESS_TOPIC, value=token)
    if writer.flush(timeout_s) != 0:
        raise NotReadyError("Kafka did not acknowledge the readiness record")
    reader = consumer(connection, group_id=f"fleetwatch-readiness-{token.decode()}")
    try:
        reader.assign([TopicPartition(READINESS_TOPIC, 0, 0)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None and message.value() == token:
                return time.monotonic() - started
    finally:
        reader.close()
    raise NotReadyError(f"the readiness record did not come back within {timeout_s:.0f}s")


def prove_redis_ping(url: str) -> float:
    started = time.monotonic()
    client = redis.Redis.from_url(url, socket_timeout=2)
    if not client.ping():
        raise NotReadyError(f"Redis at {url} did not answer PING")
    return time.monotonic() - started
