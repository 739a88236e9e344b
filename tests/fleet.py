"""Scoring workers as real `fleetwatch worker` processes, their topics and registry, for integration tests.

Used by tests/test_worker.py (routing, reload, crashes) and tests/test_faults.py (broker, Redis and
worker faults). Each worker's stderr goes to its own log file, never to a pipe nobody drains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shared.artifact_store import RedisArtifactStore
from shared.config import topic_environment
from shared.http_endpoints import scrape_metrics, wait_until_ready
from shared.kafka_client import KafkaConnection, consumer, ensure_topics, produce_all, producer, topic_partitions
from shared.local_infra.processes import free_port
from shared.output_records import decode_output
from shared.redis_connection import RedisClient, connect_redis
from shared.registry import ModelRegistry
from shared.streams.transactions.files import transaction_payloads
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions

KEY = "worker-test-key-0123456789"
FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
OUTPUT_ROLES = ("alerts", "summary", "deadletter")
TOPIC_NAMES = {"input": "events", "alerts": "alerts", "summary": "summary", "deadletter": "deadletter"}
# For a worker a test kills: found dead within 6 s (the broker's minimum session) instead of librdkafka's 45,
# and its open transaction aborted within 10 s instead of 60, so its successor does not wait a minute.
QUICK_FAILOVER = {
    "FLEETWATCH_WORKER__CONSUMER_PROPERTIES": json.dumps({"session.timeout.ms": "6000"}),
    "FLEETWATCH_WORKER__PRODUCER_PROPERTIES": json.dumps({"transaction.timeout.ms": "10000"}),
}


@dataclass
class Fleet:
    """One test's topics, registry and worker processes."""

    kafka: KafkaConnection
    client: RedisClient
    registry: ModelRegistry
    env: dict[str, str]
    topics: dict[str, str]
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    _log_files: dict[int, Path] = field(default_factory=dict)
    _tail: Consumer | None = None
    _received: dict[str, list] = field(default_factory=lambda: {role: [] for role in OUTPUT_ROLES})

    def start_worker(self, **extra_env: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**self.env, "FLEETWATCH_WORKER__METRICS_PORT": str(port), **extra_env}
        log_file = self.log_dir / f"worker-{len(self.processes)}.log"
        with log_file.open("w") as log:
            process = subprocess.Popen([FLEETWATCH, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log)
        self._log_files[process.pid] = log_file
        self.processes.append(process)
        if not wait_until_ready(port, lambda: process.poll() is None, timeout_s=60):
            raise AssertionError(f"worker not ready:\n{self.log_of(process)}")
        return process, port

    def log_of(self, process: subprocess.Popen) -> str:
        return self._log_files[process.pid].read_text(errors="replace")

    def produce(self, payloads: list[bytes], keys: list[str]) -> None:
        assert produce_all(self.kafka, self.topics["input"], keys, payloads) == 0

    def outputs(self) -> dict[str, list]:
        """Every committed output so far, read incrementally by one read_committed consumer."""
        if self._tail is None:
            self._tail = consumer(self.kafka, group_id=f"tail-{uuid.uuid4().hex}")
            self._tail.assign(
                [TopicPartition(self.topics[role], p, 0) for role in OUTPUT_ROLES
                 for p in topic_partitions(self.kafka, self.topics[role])]
            )  # fmt: skip
        roles = {self.topics[role]: role for role in OUTPUT_ROLES}
        deadline = time.monotonic() + 1.0  # bounded: outputs keep coming while a producer runs
        while batch := self._tail.consume(num_messages=10_000, timeout=0.2):
            for message in batch:
                if message.error() is None:
                    self._received[roles[message.topic()]].append(message)
            if time.monotonic() > deadline:
                break
        return {role: list(records) for role, records in self._received.items()}

    def scored_count(self) -> int:
        outputs = self.outputs()
        return len(outputs["alerts"]) + len(outputs["summary"])

    def wait_for_outputs(self, expected: int, timeout_s: float = 120) -> dict[str, list]:
        deadline = time.monotonic() + timeout_s
        while True:
            outputs = self.outputs()
            total = sum(len(records) for records in outputs.values())
            if total >= expected or time.monotonic() > deadline:
                return outputs
            time.sleep(0.5)


@contextmanager
def open_fleet(kafka: KafkaConnection, redis_url: str, name: str, log_dir: Path) -> Iterator[Fleet]:
    """Topics `<role>.<name>` (three partitions each) on `kafka`, a registry under the Redis prefix
    `<name>:`, and the environment that points workers at both; kills the workers still running on exit."""
    topics = {role: f"{topic}.{name}" for role, topic in TOPIC_NAMES.items()}
    ensure_topics(kafka, topics.values(), partitions=3)
    prefix = f"{name}:"
    client = connect_redis(redis_url)
    registry = ModelRegistry(client, RedisArtifactStore(client, prefix), KEY.encode(), prefix)
    env = {
        **os.environ,
        "FLEETWATCH_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "FLEETWATCH_REDIS_URL": redis_url,
        "FLEETWATCH_REDIS_PREFIX": prefix,
        "FLEETWATCH_REGISTRY_KEY": KEY,
        "FLEETWATCH_LOG_FORMAT": "json",
        "FLEETWATCH_WORKER__GROUP_ID": f"scorers-{name}",
        "FLEETWATCH_WORKER__RECONCILE_INTERVAL_S": "1",
        "FLEETWATCH_WORKER__BATCH_SIZE": "200",
        **topic_environment(topics),
    }
    fleet = Fleet(kafka, client, registry, env, topics, log_dir)
    try:
        yield fleet
    finally:
        for process in fleet.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if fleet._tail is not None:
            fleet._tail.close()


def labelled_stream(events: int, seed: int) -> tuple[list[bytes], list[str]]:
    data = generate_transactions(GeneratorSpec(users=max(events // 10, 10), events=events, seed=seed))
    return transaction_payloads(data, 0, len(data)), data.columns["user_id"].tolist()


def event_ids(records: list) -> list[str]:
    return [msgspec.json.decode(decode_output(r.value()).event)["event_id"] for r in records]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def produce_paced(fleet: Fleet, payloads: list[bytes], keys: list[str], per_second: int) -> int:
    """Produce at about `per_second`; return how many records the broker did not acknowledge."""
    writer = producer(fleet.kafka)
    step = per_second // 20
    for start in range(0, len(payloads), step):
        for payload, key in zip(payloads[start : start + step], keys[start : start + step], strict=True):
            writer.produce(fleet.topics["input"], value=payload, key=key)
        time.sleep(0.05)
    return writer.flush(60)


def metric_total(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of `name` (a counter's name without _total) whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape_metrics(port))
        for sample in family.samples
        if sample.name == f"{name}_total" and labels.items() <= sample.labels.items()
    )
