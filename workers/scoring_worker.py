"""`fleetwatch worker`: consume micro-batches, score every event against every deployed detector, route.

The loop has the shape of confluent-kafka's transactional example: consume a batch, build all its
outputs (alerts, summaries, dead letters), then produce them and commit the consumed offsets in one
Kafka transaction. A transaction that must abort is aborted and the batch is consumed again from the
last committed offsets; a fenced producer (another worker took over) ends this worker. New model
versions are swapped in between batches, so a batch is never scored by two versions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import redis
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from shared import metrics
from shared.config import FleetwatchSettings
from shared.contracts import decode_transactions
from shared.errors import FleetwatchError
from shared.features import TransactionColumns, advance_profiles
from shared.http_endpoints import start_http_endpoints
from shared.kafka_client import consumer, producer
from shared.logs import get_logger
from shared.model_version import DeployedVersion
from shared.output_records import OutputRecord, Source, dead_letter, scored_records
from shared.profile_store import ProfileStore
from shared.registry import open_registry
from shared.scoring import score_batch
from shared.user_profiles import Profiles
from workers.version_watcher import VersionWatcher

log = get_logger("fleetwatch.worker")


@dataclass
class Stage:
    """Times one stage of a batch into fleetwatch_batch_stage_seconds."""

    stream: str
    name: str

    def __enter__(self) -> Stage:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        metrics.STAGE_SECONDS.labels(self.stream, self.name).observe(time.perf_counter() - self._started)


class StreamScorer:
    """Everything one stream's batch needs between the consumed messages and the output records."""

    def __init__(self, stream: str, settings: FleetwatchSettings, profiles: ProfileStore) -> None:
        if stream != "transactions":
            raise FleetwatchError(f"stream {stream!r}: only 'transactions' has a feature pipeline so far")
        self.stream = stream
        self.input_topic: str = getattr(settings.topics, stream)
        self._summary_topic: str = getattr(settings.topics, f"summary_{stream}")
        self._alert_topic = settings.topics.alerts
        self._deadletter_topic = settings.topics.deadletter
        self._top = settings.worker.top_features
        self._profiles = profiles
        self.version: DeployedVersion | None = None

    def build_outputs(self, messages: list[Message]) -> list[OutputRecord]:
        assert self.version is not None
        stream = self.stream
        with Stage(stream, "decode"):
            payloads = [m.value() for m in messages]
            decoded = decode_transactions(payloads)
        outputs = []
        for error in decoded.errors:
            source = _source(messages[error.index])
            outputs.append(dead_letter(error, messages[error.index].key(), source, stream, self._deadletter_topic))
            metrics.DEAD_LETTERS.labels(stream, error.kind.value).inc()
        metrics.EVENTS.labels(stream, "deadletter").inc(len(decoded.errors))
        if not decoded.events:
            return outputs
        valid = [messages[i] for i in decoded.positions]
        with Stage(stream, "featurize"):
            columns = TransactionColumns.from_events(decoded.events)
        with Stage(stream, "state"):
            raw = self._features_with_profiles(columns, valid)
        with Stage(stream, "score"):
            scored = score_batch(self.version, raw, stream, self._top)
        with Stage(stream, "encode"):
            outputs += scored_records(
                self.version,
                scored,
                raw,
                [payloads[i] or b"" for i in decoded.positions],
                [m.key() for m in valid],
                [_source(m) for m in valid],
                stream,
                self._alert_topic,
                self._summary_topic,
            )
        alerts = int(scored.alert.sum())
        metrics.EVENTS.labels(stream, "alert").inc(alerts)
        metrics.EVENTS.labels(stream, "summary").inc(len(valid) - alerts)
        return outputs

    def _features_with_profiles(self, columns: TransactionColumns, messages: list[Message]) -> np.ndarray:
        """Features from the users' Redis profiles; without Redis, from empty histories (and say so)."""
        offsets = np.array([m.offset() for m in messages], dtype=np.int64)
        partitions = np.array([m.partition() for m in messages], dtype=np.int64)
        users, inverse = np.unique(columns.user_id, return_inverse=True)
        first = np.full(len(users), np.iinfo(np.int64).max)
        last = np.full(len(users), -1)
        np.minimum.at(first, inverse, offsets)
        np.maximum.at(last, inverse, offsets)
        user_partition = np.zeros(len(users), dtype=np.int64)
        user_partition[inverse] = partitions
        try:
            start = self._profiles.read(users, user_partition, first)
        except redis.RedisError as exc:
            metrics.PROFILE_STORE_ERRORS.labels(self.stream).inc()
            log.warning("profile store unavailable; scoring with empty histories", error=str(exc))
            raw, _ = advance_profiles(Profiles.empty(), columns)
            return raw
        raw, after = advance_profiles(start, columns)
        try:
            refused = self._profiles.write(after, start, user_partition, first, last)
        except redis.RedisError as exc:
            metrics.PROFILE_STORE_ERRORS.labels(self.stream).inc()
            log.warning("profile store write failed; profiles of this batch are not kept", error=str(exc))
        else:
            if refused:
                log.warning("profiles newer than this batch were kept (another worker is ahead)", users=refused)
        return raw


def _source(message: Message) -> Source:
    return Source(message.topic() or "", int(message.partition() or 0), int(message.offset() or 0))


class ScoringWorker:
    def __init__(self, settings: FleetwatchSettings) -> None:
        self.settings = settings
        worker = settings.worker
        self._client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._registry = open_registry(settings, self._client)
        self._watcher = VersionWatcher(self._registry, self._client, worker.streams, worker.reconcile_interval_s)
        ttl = worker.profile_ttl_days * 86400
        self._scorers = {
            stream: StreamScorer(stream, settings, ProfileStore(self._client, settings.redis_prefix, stream, ttl))
            for stream in worker.streams
        }
        self._by_topic = {scorer.input_topic: scorer for scorer in self._scorers.values()}
        self._exactly_once = worker.delivery == "exactly_once"
        self._stopping = threading.Event()
        self._ready = False
        connection = settings.kafka_connection()
        self._consumer = consumer(
            connection,
            worker.group_id,
            **{"statistics.interval.ms": 5000, "stats_cb": _record_lag, "enable.partition.eof": False},
            **worker.consumer_properties,
        )
        producer_settings: dict[str, object] = {"linger.ms": 5, **worker.producer_properties}
        if self._exactly_once:
            producer_settings["transactional.id"] = f"{worker.group_id}-{socket.gethostname()}-{os.getpid()}"
        self._producer = producer(connection, **producer_settings)

    # --- lifecycle -----------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing the batch in flight", bound_s=self.settings.worker.shutdown_timeout_s)
            self._stopping.set()
            watchdog = threading.Timer(self.settings.worker.shutdown_timeout_s, _exit_after_bound)
            watchdog.daemon = True
            watchdog.start()

    def run(self) -> None:
        worker = self.settings.worker
        start_http_endpoints(worker.metrics_port, ready=lambda: self._ready and not self._stopping.is_set())
        self._watcher.start()
        if self._exactly_once:
            self._producer.init_transactions(30)
        self._wait_for_versions()
        if self._stopping.is_set():
            return self._close()
        self._consumer.subscribe(list(self._by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consuming", topics=list(self._by_topic), delivery=worker.delivery, batch_size=worker.batch_size)
        while not self._stopping.is_set():
            self._swap_versions()
            messages = self._consumer.consume(num_messages=worker.batch_size, timeout=worker.batch_timeout_s)
            if messages:
                self._process(messages)
        self._close()

    def _wait_for_versions(self) -> None:
        waiting_since = time.monotonic()
        while not self._stopping.is_set():
            self._swap_versions()
            missing = [s for s, scorer in self._scorers.items() if scorer.version is None]
            if not missing:
                self._ready = True
                return
            if time.monotonic() - waiting_since > 10:
                log.info("waiting for a deployed model version", streams=missing)
                waiting_since = time.monotonic()
            time.sleep(0.1)

    def _swap_versions(self) -> None:
        """Between batches: take any newly loaded version, so one batch never mixes versions."""
        for stream, scorer in self._scorers.items():
            staged = self._watcher.take_staged(stream)
            if staged is not None:
                scorer.version = staged
                self._watcher.mark_serving(stream, staged)

    def _on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _close(self) -> None:
        self._watcher.stop()
        self._consumer.close()  # leaves the group, so partitions move on at once
        self._producer.flush(10)
        log.info("worker stopped")

    # --- one batch -----------------------------------------------------------------------------
    def _process(self, messages: list[Message]) -> None:
        valid: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer error", error=str(error))
                continue
            valid[message.topic() or ""].append(message)
        outputs: list[OutputRecord] = []
        for topic, batch in valid.items():
            scorer = self._by_topic[topic]
            metrics.BATCH_SIZE.labels(scorer.stream).observe(len(batch))
            outputs += scorer.build_outputs(batch)
        offsets = _next_offsets(messages)
        if self._exactly_once:
            self._commit_transaction(outputs, offsets)
        else:
            self._produce(outputs)
            self._producer.flush(30)
            self._consumer.commit(offsets=offsets, asynchronous=False)
        self._observe_latency(messages)

    def _observe_latency(self, messages: list[Message]) -> None:
        """Event time (the input record's Kafka timestamp) to output handed over and committed."""
        now_ms = time.time() * 1000.0
        for message in messages:
            kind, stamp = message.timestamp()
            scorer = self._by_topic.get(message.topic() or "")
            if scorer is not None and kind and stamp > 0:  # prometheus-client has no batch observe
                metrics.EVENT_LATENCY.labels(scorer.stream).observe((now_ms - stamp) / 1000.0)

    def _produce(self, outputs: list[OutputRecord]) -> None:
        for record in outputs:
            while True:
                try:
                    self._producer.produce(record.topic, value=record.value, key=record.key, headers=record.headers)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def _commit_transaction(self, outputs: list[OutputRecord], offsets: list[TopicPartition]) -> None:
        streams = {self._by_topic[tp.topic].stream for tp in offsets}
        try:
            self._producer.begin_transaction()
            self._produce(outputs)
            self._producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            started = time.perf_counter()
            self._producer.commit_transaction(30)
            for stream in streams:
                metrics.STAGE_SECONDS.labels(stream, "commit").observe(time.perf_counter() - started)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                log.error("producer fenced or fatal; another worker owns these partitions now", error=str(error))
                raise
            log.warning("transaction failed; aborting and re-reading the batch", error=str(error))
            for stream in streams:
                metrics.TRANSACTIONS_ABORTED.labels(stream).inc()
            self._producer.abort_transaction(30)
            self._rewind(offsets)

    def _rewind(self, offsets: list[TopicPartition]) -> None:
        """Seek back to the last committed offsets, so the aborted batch is consumed again."""
        committed = self._consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in offsets], timeout=30)
        for tp in committed:
            tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(tp)


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic() or "", int(message.partition() or 0))
        highest[key] = max(highest.get(key, -1), int(message.offset() or 0))
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in highest.items()]


def _record_lag(stats_json: str) -> None:
    """librdkafka's statistics callback: per-partition lag = end of the partition - this consumer's position.

    Not librdkafka's `consumer_lag`, which counts from the consumer's committed offset: with exactly-once
    the offsets are committed by the producer's transaction, so that figure never moves.
    """
    stats = json.loads(stats_json)
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            end = p.get("ls_offset", -1) if p.get("ls_offset", -1) >= 0 else p.get("hi_offset", -1)
            position = p.get("app_offset", -1)
            if partition != "-1" and end >= 0 and position >= 0:
                metrics.CONSUMER_LAG.labels(topic, partition).set(max(end - position, 0))


def _exit_after_bound() -> None:
    log.error("graceful stop exceeded its bound; exiting now")
    os._exit(3)


def run_worker(settings: FleetwatchSettings) -> None:
    worker = ScoringWorker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, worker.request_stop)
    worker.run()
