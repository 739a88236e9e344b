"""`fleetwatch worker`: consume micro-batches, score every event against every deployed detector, route.

The loop has the shape of confluent-kafka's transactional example: consume a batch, build all its
outputs (alerts, summaries, dead letters), then produce them and commit the consumed offsets in one
Kafka transaction (exactly-once), or produce them, wait until the broker acknowledged every one, and
only then commit the offsets, asynchronously (at-least-once). A batch whose outputs do not commit (its
transaction aborted, an output refused or not acknowledged in time) is consumed again from its first
offsets after a short backoff, so nothing is lost. Retriable transactional errors are retried by the
producer; a fatal one (a fenced producer: another worker took over) ends this worker. New model
versions are swapped in between batches, so a batch is never scored by two versions.

With `worker.overlap_commit` the commit runs on a committer thread while the loop consumes and scores the
next batch, so the Redis state write and the broker's round trips overlap that compute; order is kept: a
batch's entity states are stored before the next batch reads them, and the next batch is handed over (its
states stored, its outputs produced) only once this one committed; if this one did not, the next is
dropped unstored and both are read again. Without it the loop commits each batch itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from threadpoolctl import threadpool_limits

from shared import metrics
from shared.config import FleetwatchSettings
from shared.entity_state import EntityStates
from shared.http_endpoints import start_http_endpoints
from shared.kafka_client import (
    DeliveryReport,
    ProducerQueueFull,
    consumer,
    first_offsets,
    next_offsets,
    producer,
)
from shared.logs import get_logger
from shared.output_records import OutputRecord
from shared.redis_connection import connect_redis
from shared.registry import open_registry
from shared.state_store import EntityStateStore, StateWrite
from shared.streams.catalog import stream_named
from workers.stream_scorer import EventCounts, StreamScorer
from workers.version_watcher import VersionWatcher

log = get_logger("fleetwatch.worker")

DELIVERY_TIMEOUT_S = 30.0
"""At-least-once: how long a batch waits for its outputs' acknowledgements before it is read again."""
TRANSACTION_CALL_TIMEOUT_S = 30.0
"""Exactly-once: one attempt of a transactional call (the producer retries retriable errors, bounded)."""
REREAD_BACKOFF_S, REREAD_BACKOFF_MAX_S = 0.25, 5.0
"""Pause before reading a failed batch again, doubling per consecutive failure up to the maximum."""


class ScoringWorker:
    def __init__(self, settings: FleetwatchSettings) -> None:
        self.settings = settings
        worker = settings.worker
        self._client = connect_redis(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._registry = open_registry(settings, self._client)
        self._watcher = VersionWatcher(self._registry, self._client, worker.streams, worker.reconcile_interval_s)
        ttl = worker.profile_ttl_days * 86400
        streams = [stream_named(name) for name in worker.streams]
        self._scorers = {
            stream.name: StreamScorer(
                stream, settings, EntityStateStore(self._client, settings.redis_prefix, stream, ttl)
            )
            for stream in streams
        }
        self._by_topic = {scorer.input_topic: scorer for scorer in self._scorers.values()}
        self._exactly_once = worker.delivery == "exactly_once"
        self._stopping = threading.Event()
        self._failed_attempts = 0  # consecutive batches that did not commit
        self._next_idle_sweep = 0.0  # monotonic time of the next idle-session sweep
        # With `overlap_commit`: commits one batch while the loop scores the next; one thread keeps batches in order.
        self._committer = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="committer") if worker.overlap_commit else None
        )
        self._in_flight: _InFlight | None = None
        self._ready = False
        connection = settings.kafka_connection()
        self._consumer = consumer(
            connection,
            worker.group_id,
            **{
                "statistics.interval.ms": 5000,
                "stats_cb": _record_lag,
                "on_commit": _count_failed_commit,
                "enable.partition.eof": False,
            },
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
            self._process(self._next_batch())
        self._settle_in_flight()
        self._close()

    def _next_batch(self) -> list[Message]:
        """Wait up to `batch_timeout_s` for `batch_min_size` records, then take every record already fetched, up
        to `batch_size`. confluent-kafka's `consume` alone waits out its whole timeout unless the batch fills, which
        under light load adds that timeout to every event's latency; with a minimum of 1, batches grow with the
        load by themselves (what arrives while one batch is scored makes the next)."""
        worker = self.settings.worker
        deadline = time.monotonic() + worker.batch_timeout_s
        messages: list[Message] = []
        while len(messages) < worker.batch_min_size:
            first = self._consumer.poll(max(deadline - time.monotonic(), 0.0))
            if first is None:
                break
            messages.append(first)
            if len(messages) < worker.batch_size:
                messages += self._consumer.consume(num_messages=worker.batch_size - len(messages), timeout=0)
        return messages

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
        swapped = False
        for stream, scorer in self._scorers.items():
            staged = self._watcher.take_staged(stream)
            if staged is not None:
                scorer.version = staged
                self._watcher.mark_serving(stream, staged)
                swapped = True
        if swapped:
            _freeze_long_lived_objects()

    def _on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        self._settle_in_flight()  # its transaction or offsets while the partitions are still this worker's
        for revoked in partitions:  # the new owner reports their lag; a value left here would never move again
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(revoked.topic, str(revoked.partition))
        log.info("partitions revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _close(self) -> None:
        if self._committer is not None:
            self._committer.shutdown()
        self._watcher.stop()
        self._consumer.close()  # leaves the group, so partitions move on at once
        unacknowledged = self._producer.flush(10)
        if unacknowledged:
            log.warning(
                "stopped with outputs not acknowledged; their offsets were not committed", outputs=unacknowledged
            )
        log.info("worker stopped")

    # --- one batch -----------------------------------------------------------------------------
    def _process(self, messages: list[Message]) -> None:
        """Score this batch while the previous one commits on the committer thread; then settle that one and hand
        this one over. A batch scored after one that did not commit is read again with it, its states unstored.
        Without `overlap_commit` each batch settles before the next is consumed."""
        batch = self._score(messages)
        if not self._settle_in_flight(scored_after=batch):
            return
        if batch is not None:
            self._in_flight = self._hand_over(batch)
            if self._committer is None:
                self._settle_in_flight()

    def _score(self, messages: list[Message]) -> _ScoredBatch | None:
        """Outputs of this batch's records and of any idle sessions due, with the state writes they need."""
        valid: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer error", error=str(error))
                continue
            valid[message.topic() or ""].append(message)
        if self._in_flight is not None:  # its states first: this batch may advance the same entities
            self._in_flight.states_stored.wait()
        # Before this batch moves the partitions' newest event times: a session is idle only by times whose
        # batches' states are stored (one this batch closes must not be claimed from its still-open stored state).
        ending = self._idle_session_ends()
        outputs: list[OutputRecord] = []
        store_states: list[StateWrite] = []
        counts: list[EventCounts] = []
        for topic, messages_of_topic in valid.items():
            scorer = self._by_topic[topic]
            metrics.BATCH_SIZE.labels(scorer.stream.name).observe(len(messages_of_topic))
            built = scorer.build_outputs(messages_of_topic)
            outputs += built.records
            store_states.append(built.store_states)
            counts.append(built.counts)
        if not valid and not ending:
            return None
        outputs += [record for records, _ in ending.values() for record in records]
        return _ScoredBatch(
            consumed=[message for batch in valid.values() for message in batch],
            outputs=outputs,
            streams=sorted({self._by_topic[topic].stream.name for topic in valid} | {s.stream.name for s in ending}),
            store_states=store_states,
            counts=counts,
            idle_claims={scorer: claimed for scorer, (_, claimed) in ending.items()},
        )

    def _hand_over(self, batch: _ScoredBatch) -> _InFlight:
        """Start the batch's commit: its states stored, then its outputs and offsets. On the committer thread with
        `overlap_commit`; else here, since the loop would only wait for it (a thread hand-off per batch costs two
        wake-ups, each a scheduling delay when the cores are busy)."""
        states_stored = threading.Event()
        metadata = self._consumer.consumer_group_metadata() if self._exactly_once and batch.consumed else None
        if self._committer is not None:
            return _InFlight(batch, states_stored, self._committer.submit(self._commit, batch, states_stored, metadata))
        done: Future[bool] = Future()
        done.set_result(self._commit(batch, states_stored, metadata))  # what ends the worker is raised here
        return _InFlight(batch, states_stored, done)

    def _commit(self, batch: _ScoredBatch, states_stored: threading.Event, group_metadata: object) -> bool:
        """Raises what ends the worker (a fenced producer); the rest is a False."""
        try:
            for store in batch.store_states:
                store()
        finally:
            states_stored.set()
        if self._exactly_once:
            committed = self._commit_transaction(batch.outputs, batch.consumed, batch.streams, group_metadata)
        else:
            committed = self._deliver(batch.outputs, batch.consumed, batch.streams)
        if committed:
            self._observe_latency(batch.consumed)
        return committed

    def _settle(self, in_flight: _InFlight) -> bool:
        """Wait for a handed-over batch's commit; at-least-once then commits its offsets. Whether it committed."""
        committed = in_flight.commit.result()
        batch = in_flight.batch
        self._settle_idle_claims(batch, committed)
        if committed:
            self._failed_attempts = 0
            for counts in batch.counts:
                counts.observe()
            if not self._exactly_once and batch.consumed:
                # Asynchronous: a failed commit is superseded by the next batch's; if none follows (the partition
                # moved), its new owner reads from the older offset: outputs repeat, as at-least-once allows, and
                # none is lost, since the outputs were acknowledged first.
                self._consumer.commit(offsets=next_offsets(batch.consumed), asynchronous=True)
        return committed

    def _settle_in_flight(self, scored_after: _ScoredBatch | None = None) -> bool:
        """The batch in flight settles, or is read again, with `scored_after` (scored meanwhile, its states unstored,
        its idle claims put back). Also before partitions go (a rebalance, the end). False: it did not commit."""
        if self._in_flight is None:
            return True
        previous, self._in_flight = self._in_flight, None
        if self._settle(previous):
            return True
        consumed = previous.batch.consumed
        if scored_after is not None:
            self._settle_idle_claims(scored_after, committed=False)
            consumed = consumed + scored_after.consumed
        self._read_again(consumed)
        return False

    def _settle_idle_claims(self, batch: _ScoredBatch, committed: bool) -> None:
        for scorer, claimed in batch.idle_claims.items():
            scorer.settle_idle_sessions(claimed, committed)

    def _idle_session_ends(self) -> dict[StreamScorer, tuple[list[OutputRecord], EntityStates]]:
        """Every `idle_sweep_interval_s`: each stream's idle sessions' end records (committed with the batch), and
        the sessions claimed for them."""
        now = time.monotonic()
        if now < self._next_idle_sweep:
            return {}
        self._next_idle_sweep = now + self.settings.worker.idle_sweep_interval_s
        ends = {scorer: scorer.end_idle_sessions() for scorer in self._scorers.values() if scorer.version is not None}
        return {scorer: (records, claimed) for scorer, (records, claimed) in ends.items() if records}

    def _observe_latency(self, messages: list[Message]) -> None:
        """Event time (the input record's Kafka timestamp) to output handed over and committed."""
        now_ms = time.time() * 1000.0
        stamps = np.array([message.timestamp() for message in messages], dtype=np.float64).reshape(-1, 2)
        topics = np.array([message.topic() or "" for message in messages], dtype=object)
        stamped = (stamps[:, 0] != 0) & (stamps[:, 1] > 0)  # 0: TIMESTAMP_NOT_AVAILABLE
        for topic in set(topics.tolist()):
            scorer = self._by_topic.get(topic)
            if scorer is not None:
                rows = stamped & (topics == topic)
                metrics.EVENT_LATENCY.observe((scorer.stream.name,), (now_ms - stamps[rows, 1]) / 1000.0)

    def _produce(self, outputs: list[OutputRecord]) -> None:
        # One call per record: confluent-kafka has no batch produce (the producer retries a full queue).
        for record in outputs:
            self._producer.produce(
                record.topic, value=record.value, key=record.key, headers=record.headers, partition=record.partition
            )

    def _deliver(self, outputs: list[OutputRecord], consumed: list[Message], streams: list[str]) -> bool:
        """At-least-once: whether the broker acknowledged every output (only then are the offsets committed)."""
        started = time.perf_counter()
        try:
            self._produce(outputs)
            report = self._producer.wait_for_deliveries(DELIVERY_TIMEOUT_S)
            _observe_stage(streams, "produce", started)
        except ProducerQueueFull as exc:
            log.warning("producer queue full", error=str(exc))
            report = self._producer.wait_for_deliveries(0)
        if not report.complete:
            if report.fatal is not None:
                log.error("producer failed fatally; exiting", error=str(report.fatal))
                raise KafkaException(report.fatal)
            _count_not_acknowledged(report)
            log.warning(
                "outputs not acknowledged; offsets not committed, batch read again",
                outputs=len(outputs),
                failed=report.failed,
                unacknowledged=report.unacknowledged,
                errors=report.errors,
                batch=_offset_ranges(consumed),
            )
            for stream in streams:
                metrics.BATCHES_REREAD.labels(stream, "delivery_failed").inc()
            return False
        return True

    def _commit_transaction(
        self, outputs: list[OutputRecord], consumed: list[Message], streams: list[str], group_metadata: object
    ) -> bool:
        """Exactly-once: outputs and offsets in one transaction.

        Retriable errors were already retried by the producer (bounded); anything else but a fatal error
        aborts the transaction and the batch is read again. A fatal error (fenced: another worker owns
        these partitions now) ends this worker.
        """
        try:
            self._producer.begin_transaction()
            started = time.perf_counter()
            self._produce(outputs)
            _observe_stage(streams, "produce", started)
            started = time.perf_counter()
            if consumed:
                self._producer.send_offsets_to_transaction(
                    next_offsets(consumed), group_metadata, TRANSACTION_CALL_TIMEOUT_S
                )
            self._producer.commit_transaction(TRANSACTION_CALL_TIMEOUT_S)
            _observe_stage(streams, "commit", started)
        except (KafkaException, ProducerQueueFull) as exc:
            error: KafkaError | None = exc.args[0] if isinstance(exc, KafkaException) else None
            if error is not None and error.fatal():
                log.error(
                    "producer fenced or failed fatally; exiting", error=str(error), batch=_offset_ranges(consumed)
                )
                raise
            self._producer.abort_transaction(TRANSACTION_CALL_TIMEOUT_S)
            report = self._producer.wait_for_deliveries(0)  # the outputs the abort purged, and any refused
            _count_not_acknowledged(report)
            log.warning(
                "transaction aborted; batch read again",
                error=str(error or exc),
                abortable=bool(error and error.txn_requires_abort()),
                outputs=len(outputs),
                failed=report.failed,
                errors=report.errors,
                batch=_offset_ranges(consumed),
            )
            for stream in streams:
                metrics.TRANSACTIONS_ABORTED.labels(stream).inc()
                metrics.BATCHES_REREAD.labels(stream, "transaction_aborted").inc()
            return False
        self._producer.wait_for_deliveries(0)  # a committed transaction delivered every output: start a new count
        return True

    def _read_again(self, consumed: list[Message]) -> None:
        """Seek back to the batch's first offsets, then back off (a broker that refuses is not hammered).

        Those offsets are the committed ones: a batch is consumed only once the one before it committed.
        A partition revoked meanwhile is skipped; its new owner starts from the committed offset anyway.
        """
        for position in first_offsets(consumed):
            try:
                self._consumer.seek(position)
            except KafkaException as exc:
                log.info(
                    "not re-reading a partition this worker no longer owns",
                    partition=f"{position.topic}[{position.partition}]",
                    error=str(exc),
                )
        self._failed_attempts += 1
        self._stopping.wait(min(REREAD_BACKOFF_S * 2 ** (self._failed_attempts - 1), REREAD_BACKOFF_MAX_S))


@dataclass
class _ScoredBatch:
    """A batch between scoring and commit: what it consumed, what it outputs, the state writes it needs."""

    consumed: list[Message]
    outputs: list[OutputRecord]
    streams: list[str]
    store_states: list[StateWrite]
    counts: list[EventCounts]  # observed once it committed
    idle_claims: dict[StreamScorer, EntityStates]  # sessions its end records end


@dataclass
class _InFlight:
    """A batch handed to the committer: set once its states are stored, then its commit's outcome."""

    batch: _ScoredBatch
    states_stored: threading.Event
    commit: Future[bool]


def _offset_ranges(messages: list[Message]) -> list[str]:
    """Where a batch lies, for logs: topic[partition]@first-last."""
    return [
        f"{first.topic}[{first.partition}]@{first.offset}-{after.offset - 1}"
        for first, after in zip(first_offsets(messages), next_offsets(messages), strict=True)
    ]


def _observe_stage(streams: list[str], stage: str, started: float) -> None:
    """A Kafka step shared by the batch's streams: its whole time counts for each of them."""
    elapsed = time.perf_counter() - started
    for stream in streams:
        metrics.STAGE_SECONDS.labels(stream, stage).observe(elapsed)


def _count_not_acknowledged(report: DeliveryReport) -> None:
    for by_error in report.errors.values():
        for error, count in by_error.items():
            metrics.OUTPUTS_NOT_ACKNOWLEDGED.labels(error).inc(count)
    if report.unacknowledged:
        metrics.OUTPUTS_NOT_ACKNOWLEDGED.labels("not_acknowledged_in_time").inc(report.unacknowledged)


def _count_failed_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """At-least-once's asynchronous offset commits (served by `poll`): a failed one is logged and counted."""
    if error is None:
        return
    metrics.OFFSET_COMMITS_FAILED.inc()
    log.warning(
        "offset commit failed; a later batch's commit supersedes it, or this batch's outputs repeat",
        error=str(error),
        positions=[f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions],
    )


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


def _freeze_long_lived_objects() -> None:
    """Collect what the swap left behind (the old version), then exempt everything alive now (modules, the
    loaded version) from the cyclic collector: its full passes then scan only a batch's short-lived objects
    instead of some 10^5 long-lived ones, which took CPU and put pauses in the latency tail."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _exit_after_bound() -> None:
    log.error("graceful stop exceeded its bound; exiting now")
    os._exit(3)


def run_worker(settings: FleetwatchSettings) -> None:
    # BLAS threads spinning beside the consumer, the producer, the broker and Redis cost more than they
    # save on a micro-batch; a fleet scales by worker replicas, each computing on `compute_threads`.
    threadpool_limits(settings.worker.compute_threads)
    worker = ScoringWorker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, worker.request_stop)
    worker.run()
