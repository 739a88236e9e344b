"""The one place that builds confluent-kafka clients, and the one produce path.

Every client gets the bootstrap servers plus the user's librdkafka properties unchanged (SASL, TLS,
tuning); a caller's own settings (group id, transactional id) are layered on top.

Every producer is a `DeliveryTrackingProducer` (the shape of quix-streams' `kafka/producer.py`): it
retries a full local queue within a bound, serves delivery reports as it goes, counts what the broker
refused, and its `flush` says how many records were not acknowledged, so that no caller commits
offsets past an output that was lost. Its transactional calls retry while librdkafka calls the error
retriable, as confluent-kafka's `examples/eos-transactions.py` does; abortable and fatal errors are
the caller's to handle (abort and re-read the batch, or exit).
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shared.errors import FleetwatchError
from shared.logs import get_logger

log = get_logger("fleetwatch.kafka")

QUEUE_FULL_POLL_S = 0.05
"""How long a produce call on a full local queue waits for delivery reports (which free room) per try."""


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    properties: Mapping[str, str] = field(default_factory=dict)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap, then the user's properties, then the caller's."""
        return {"bootstrap.servers": self.bootstrap, **self.properties, **overrides}


def admin_client(connection: KafkaConnection) -> AdminClient:
    return AdminClient(connection.config())


class ProducerQueueFull(FleetwatchError):
    """The producer's local queue stayed full past its bound: the broker is not taking records."""


@dataclass(frozen=True)
class DeliveryReport:
    """What became of the records produced since the previous report.

    `unacknowledged` counts records still queued or in flight when the wait ended (they may yet be
    delivered, or fail in a later report); `errors` counts failures by topic, then librdkafka's error name.
    """

    produced: int
    failed: int
    unacknowledged: int
    errors: Mapping[str, Mapping[str, int]]
    fatal: KafkaError | None = None

    @property
    def not_acknowledged(self) -> int:
        return self.failed + self.unacknowledged

    @property
    def complete(self) -> bool:
        return self.not_acknowledged == 0


class _DeliveryLedger:
    """The producer-wide delivery callback (kept apart from the producer, so the two make no cycle)."""

    def __init__(self, on_delivered: Callable[[Message], None] | None) -> None:
        self._on_delivered = on_delivered
        self.produced = 0
        self._failed = 0
        self._errors: dict[str, Counter[str]] = {}
        self._fatal: KafkaError | None = None

    def record(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            if self._on_delivered is not None:
                self._on_delivered(message)
            return
        self._failed += 1
        self._errors.setdefault(message.topic() or "", Counter())[error.name()] += 1
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._fatal = error

    def take(self, unacknowledged: int) -> DeliveryReport:
        errors = {topic: dict(by_error) for topic, by_error in self._errors.items()}
        report = DeliveryReport(self.produced, self._failed, unacknowledged, errors, self._fatal)
        self.produced, self._failed, self._errors = 0, 0, {}
        return report


class DeliveryTrackingProducer(Producer):
    """confluent-kafka's Producer with the one produce path fleetwatch uses; see the module docstring.

    Only failed deliveries reach Python (`delivery.report.only.error`) unless `on_delivered` asks to see
    every acknowledged record (the benchmark's latency probe does). A per-record callback is refused.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_delivered: Callable[[Message], None] | None = None,
        full_queue_timeout_s: float = 60.0,
        transaction_retry_s: float = 60.0,
    ) -> None:
        self._ledger = _DeliveryLedger(on_delivered)
        self._full_queue_timeout_s = full_queue_timeout_s
        self._transaction_retry_s = transaction_retry_s
        reports = {"delivery.report.only.error": on_delivered is None, **config, "on_delivery": self._ledger.record}
        super().__init__(reports)

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        """Queue one record (confluent-kafka has no batch produce); wait, boundedly, while the queue is full."""
        if callback is not None or on_delivery is not None:
            raise TypeError("the producer counts delivery reports itself: give DeliveryTrackingProducer on_delivered")
        full_since: float | None = None
        while True:
            try:
                super().produce(topic, value, key, partition=partition, timestamp=timestamp, headers=headers)
                break
            except BufferError:
                now = time.monotonic()
                full_since = now if full_since is None else full_since
                if now - full_since > self._full_queue_timeout_s:
                    raise ProducerQueueFull(
                        f"the producer's local queue stayed full for {self._full_queue_timeout_s:.0f}s "
                        f"({len(self)} records waiting for {topic}): the broker is not acknowledging them"
                    ) from None
                super().poll(QUEUE_FULL_POLL_S)
        self._ledger.produced += 1
        super().poll(0)

    def wait_for_deliveries(self, timeout: float = -1) -> DeliveryReport:
        """Wait up to `timeout` seconds for every queued record; report on those produced since the last report."""
        remaining = super().flush(timeout)
        return self._ledger.take(remaining)

    def flush(self, timeout: float = -1) -> int:
        """How many records produced since the previous flush were not acknowledged (failed, or still queued)."""
        return self.wait_for_deliveries(timeout).not_acknowledged

    # --- transactions: retriable errors are retried here, the rest go to the caller -----------------
    def init_transactions(self, timeout: float = -1) -> None:
        self._retry_while_retriable("init_transactions", super().init_transactions, timeout)

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        def send(attempt_timeout: float) -> None:
            super(DeliveryTrackingProducer, self).send_offsets_to_transaction(
                positions, group_metadata, attempt_timeout
            )

        self._retry_while_retriable("send_offsets_to_transaction", send, timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._retry_while_retriable("commit_transaction", super().commit_transaction, timeout)

    def abort_transaction(self, timeout: float = -1) -> None:
        self._retry_while_retriable("abort_transaction", super().abort_transaction, timeout)

    def _retry_while_retriable(self, name: str, call: Callable[[float], None], timeout: float) -> None:
        """Call again while the error is retriable (librdkafka's documented recovery), up to the bound."""
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                call(timeout)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() - started > self._transaction_retry_s:
                    raise
                log.warning("transactional call failed; retrying it", call=name, attempt=attempt, error=str(error))
                time.sleep(min(0.1 * 2**attempt, 2.0))
                attempt += 1


def producer_config(connection: KafkaConnection, **overrides: Any) -> dict[str, Any]:
    defaults = {"linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True}
    config = connection.config(**{**defaults, **overrides})
    if "transactional.id" in config:
        # When every known broker was down, librdkafka re-bootstraps and drops the brokers it knew; a
        # transactional producer can then wait on a dropped group coordinator and block in
        # send_offsets_to_transaction past its timeout (confluentinc/librdkafka#5456, #5511: a one-broker
        # restart hangs the worker for good). Brokers that come back on their addresses need no
        # re-bootstrap; a cluster that moves all of them at once may set "rebootstrap" again.
        config.setdefault("metadata.recovery.strategy", "none")
    return config


class ClientErrorLog:
    """librdkafka's client-level errors (a broker unreachable, all brokers down, authentication refused) in the
    structured log. librdkafka retries all but fatal ones itself and prints each attempt on stderr as plain
    text; here each kind is logged when it first happens and then at most once per `every_s`, with how often it
    recurred, so a client that cannot reach its brokers says so in the collector's terms without flooding it."""

    def __init__(self, client: str, every_s: float = 30.0) -> None:
        self._client = client
        self._every_s = every_s
        self._last_logged: dict[str, float] = {}
        self._since_logged: Counter[str] = Counter()

    def __call__(self, error: KafkaError) -> None:
        kind = error.name()
        self._since_logged[kind] += 1
        now = time.monotonic()
        if now - self._last_logged.get(kind, -math.inf) < self._every_s:
            return
        self._last_logged[kind] = now
        log.warning(
            "kafka client error",
            client=self._client,
            error=kind,
            reason=error.str(),
            retried=not error.fatal(),
            occurrences=self._since_logged.pop(kind),
        )


def producer(connection: KafkaConnection, **overrides: Any) -> DeliveryTrackingProducer:
    return DeliveryTrackingProducer(
        producer_config(connection, **{"error_cb": ClientErrorLog("producer"), **overrides})
    )


def consumer(connection: KafkaConnection, group_id: str, **overrides: Any) -> Consumer:
    defaults = {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "error_cb": ClientErrorLog("consumer"),
    }
    return Consumer(connection.config(**{**defaults, **overrides}))


def ensure_topics(
    connection: KafkaConnection,
    names: Iterable[str],
    partitions: int,
    timeout_s: float = 30.0,
    replication_factor: int = -1,
) -> list[str]:
    """Create the topics that do not exist yet (replicas: the broker's default unless given); return the ones
    created."""
    admin = admin_client(connection)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor) for name in names]
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
    queue_limit: int = 500_000,
) -> int:
    """Produce every payload (keyed) and wait for all acknowledgements; return how many were not acknowledged.
    Any number of payloads: at `queue_limit` queued messages it waits for deliveries to make room."""
    writer = producer(
        connection, **{"linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": queue_limit}
    )
    # confluent-kafka has no batch produce call; this loop is the client's own idiom for bulk writes.
    for index, (key, payload) in enumerate(zip(keys, payloads, strict=True), start=1):
        while True:
            try:
                writer.produce(topic, value=payload, key=key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it, then queue this one
                writer.poll(0.5)
        if index % report_every == 0:
            on_progress(report_every)
    not_acknowledged = writer.flush(120)
    on_progress(len(payloads) % report_every)
    return not_acknowledged


def next_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    """The offsets to commit after `messages`: one past the highest consumed, per topic partition."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic() or "", int(message.partition() or 0))
        highest[key] = max(highest.get(key, -1), int(message.offset() or 0))
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in highest.items()]


def first_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    """Where `messages` start, per topic partition: the positions to seek back to, to read them again."""
    lowest: dict[tuple[str, int], int] = {}
    for message in messages:
        key, offset = (message.topic() or "", int(message.partition() or 0)), int(message.offset() or 0)
        lowest[key] = min(lowest.get(key, offset), offset)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in lowest.items()]
