"""Training data for a round (seed 000: a time range and a sample rate), from files or a Kafka topic:
the raw input topic, or a summary topic of the records the workers judged normal.

Sampling keeps or drops whole users (by a hash of the user id), never single events: a sampled
user's history stays complete, so the behaviour features mean in training what they mean online.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
from confluent_kafka import TopicPartition

from shared.contracts import Transaction, decode_transactions
from shared.event_files import read_labels, read_payloads
from shared.features import TransactionColumns
from shared.kafka_client import KafkaConnection, consumer, topic_partitions
from shared.output_records import decode_output
from shared.training import TrainingData, TrainingError


def _user_kept(user_id: str, sample_rate: float) -> bool:
    if sample_rate >= 1.0:
        return True
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < sample_rate


def training_data_from_events(
    events: Sequence[Transaction],
    source: str,
    sample_rate: float,
    max_rows: int,
    labels: dict[str, tuple[bool, str]] | None = None,
) -> TrainingData:
    """Sample by user, order by time, keep the latest `max_rows`, attach labels where known."""
    kept = [event for event in events if _user_kept(event.user_id, sample_rate)]
    kept.sort(key=lambda event: event.timestamp)
    kept = kept[-max_rows:]
    if not kept:
        raise TrainingError(f"no events to train on from {source}")
    is_anomaly = None
    if labels is not None:
        missing = sum(1 for event in kept if event.event_id not in labels)
        if missing:
            raise TrainingError(f"{missing} of {len(kept)} events have no label in the labelled set")
        is_anomaly = np.array([labels[event.event_id][0] for event in kept])
    return TrainingData(TransactionColumns.from_events(kept), is_anomaly, source)


def from_files(paths: Sequence[Path], labels_path: Path | None, sample_rate: float, max_rows: int) -> TrainingData:
    payloads = [payload for path in paths for payload in read_payloads(path)]
    batch = decode_transactions(payloads)
    labels = read_labels(labels_path) if labels_path else None
    source = ", ".join(str(path) for path in paths)
    return training_data_from_events(batch.events, f"file:{source}", sample_rate, max_rows, labels)


def from_topic(
    connection: KafkaConnection,
    topic: str,
    window_hours: float | None,
    sample_rate: float,
    max_rows: int,
    labels_path: Path | None = None,
    timeout_s: float = 300.0,
) -> TrainingData:
    """Read the topic from `window_hours` ago (or its start) up to its end at the time of the call."""
    reader = consumer(connection, group_id=f"fleetwatch-trainer-sample-{time.time_ns()}")
    try:
        partitions = [TopicPartition(topic, p) for p in topic_partitions(connection, topic)]
        ends = {tp.partition: reader.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        if window_hours is not None:
            since_ms = int((time.time() - window_hours * 3600) * 1000)
            partitions = reader.offsets_for_times(
                [TopicPartition(topic, tp.partition, since_ms) for tp in partitions], 10
            )
        else:
            partitions = [TopicPartition(topic, tp.partition, 0) for tp in partitions]
        starts = {tp.partition: tp.offset for tp in partitions}
        pending = {p for p, end in ends.items() if 0 <= starts[p] < end}
        reader.assign([tp for tp in partitions if tp.partition in pending])
        payloads: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in reader.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                partition, offset = int(message.partition() or 0), int(message.offset() or 0)
                if offset < ends[partition]:
                    payloads.append(message.value() or b"")
                if offset >= ends[partition] - 1:
                    pending.discard(partition)
    finally:
        reader.close()
    if pending:
        raise TrainingError(f"reading {topic} did not reach its end within {timeout_s:.0f}s")
    batch = decode_transactions([unwrap_scored_event(payload) for payload in payloads])
    labels = read_labels(labels_path) if labels_path else None
    return training_data_from_events(batch.events, f"kafka:{topic}", sample_rate, max_rows, labels)


def unwrap_scored_event(payload: bytes) -> bytes:
    """A summary topic's record (judged normal by the workers) carries the original event; take it out."""
    if not payload.startswith(b'{"type":"summary"'):
        return payload
    try:
        return bytes(decode_output(payload).event)
    except msgspec.DecodeError:
        return payload  # left for the event decoder to reject with its reason
