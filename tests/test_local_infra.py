"""Real round trips through the broker and Redis server that the session fixtures started."""

from __future__ import annotations

import time

import redis
from confluent_kafka import TopicPartition

from shared.kafka_client import KafkaConnection, consumer, producer, read_all, topic_partitions
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.readiness import prove_kafka_round_trip, prove_redis_ping
from shared.local_infra.redis_server import RedisServer


def test_broker_is_kraft_single_node_on_loopback(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.bootstrap.startswith("127.0.0.1:") and kafka_broker.port != 19092
    properties = (kafka_broker.data_dir / "server.properties").read_text()
    assert "process.roles=broker,controller" in properties


def test_records_round_trip_through_the_broker_in_key_order(kafka: KafkaConnection, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("roundtrip", partitions=3)
    assert topic_partitions(kafka, topic) == [0, 1, 2]
    writer = producer(kafka)
    for i in range(300):
        writer.produce(topic, key=f"user-{i % 7}", value=str(i).encode())
    assert writer.flush(30) == 0
    records = read_all(kafka, topic)
    assert sorted(int(r.value()) for r in records) == list(range(300))
    per_key: dict[bytes, list[int]] = {}
    for record in records:
        per_key.setdefault(record.key(), []).append(int(record.value()))
    assert all(values == sorted(values) for values in per_key.values())


def test_transactions_commit_atomically_for_read_committed_readers(
    kafka: KafkaConnection, make_topic, unique_name
) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("txn", partitions=1)
    writer = producer(kafka, **{"transactional.id": unique_name})
    writer.init_transactions(30)
    writer.begin_transaction()
    writer.produce(topic, value=b"aborted")
    writer.abort_transaction(30)
    writer.begin_transaction()
    writer.produce(topic, value=b"committed")
    writer.commit_transaction(30)
    reader = consumer(kafka, group_id=unique_name)
    reader.assign([TopicPartition(topic, 0, 0)])
    seen = []
    deadline = time.monotonic() + 20
    while "committed" not in seen and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is not None and message.error() is None:
            seen.append(message.value().decode())
    reader.close()
    assert seen == ["committed"]


def test_readiness_is_a_real_round_trip(kafka: KafkaConnection, redis_server: RedisServer) -> None:
    assert prove_kafka_round_trip(kafka) < 30
    assert prove_redis_ping(redis_server.url) < 1


def test_redis_keys_are_isolated_by_prefix(redis_client: redis.Redis, unique_name: str) -> None:
    redis_client.hset(f"{unique_name}:profile:u1", mapping={"count": 3})
    assert redis_client.hget(f"{unique_name}:profile:u1", "count") == b"3"
    assert redis_client.keys(f"{unique_name}:*") == [f"{unique_name}:profile:u1".encode()]
