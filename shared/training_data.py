"""Training data for a round (seed 000: a time range and a sample rate), from files or a Kafka topic:
the raw input topic, or a summary topic of the records the workers judged normal. Any stream.

Sampling keeps or drops whole entities (by a hash of the entity key), never single events: a sampled
entity's history stays complete, so the behaviour features mean in training what they mean online.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import TopicPartition

from shared.event_files import label_arrays, read_labels, read_payloads
from shared.kafka_client import KafkaConnection, consumer, topic_partitions
from shared.output_records import decode_output
from shared.pipeline import Stream
from shared.training import TrainingData, TrainingError


def entities_kept(entities: np.ndarray, sample_rate: float) -> np.ndarray:
    """Which events belong to a sampled entity; each distinct entity is hashed once."""
    if sample_rate >= 1.0:
        return np.ones(len(entities), dtype=bool)
    distinct, inverse = np.unique(entities, return_inverse=True)
    kept = np.array(
        [
            int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "big") / 2**64 < sample_rate
            for key in distinct.tolist()
        ],
        dtype=bool,
    )
    return kept[inverse.reshape(-1)]


def training_data_from_payloads(
    stream: Stream[Any, Any],
    payloads: Sequence[bytes | None],
    source: str,
    sample_rate: float,
    max_rows: int,
    labels: dict[str, tuple[bool, str]] | None = None,
) -> TrainingData:
    """Decode, sample by entity, order by time, keep the latest `max_rows`, attach labels where known."""
    columns = stream.columns(stream.decode(payloads).events)
    kept = np.flatnonzero(entities_kept(columns.entity, sample_rate))
    kept = kept[np.argsort(columns.event_time_s[kept], kind="stable")][-max_rows:]
    if not len(kept):
        raise TrainingError(f"no events to train on from {source}")
    columns = columns.take(kept)
    is_anomaly = kinds = None
    if labels is not None:
        missing = sum(1 for event_id in columns.event_id.tolist() if event_id not in labels)
        if missing:
            raise TrainingError(f"{missing} of {len(columns)} events have no label in the labelled set")
        is_anomaly, kinds = label_arrays(labels, columns.event_id.tolist())
    return TrainingData(columns, is_anomaly, source, anomaly_kind=kinds)


def from_files(
    stream: Stream[Any, Any], paths: Sequence[Path], labels_path: Path | None, sample_rate: float, max_rows: int
) -> TrainingData:
    payloads = [payload for path in paths for payload in read_payloads(path, stream.table_payloads)]
    labels = read_labels(labels_path) if labels_path else None
    source = ", ".join(str(path) for path in paths)
    return training_data_from_payloads(stream, payloads, f"file:{source}", sample_rate, max_rows, labels)


def from_topic(
    stream: Stream[Any, Any],
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
                if message.error() is None and int(message.offset() or 0) < ends[int(message.partition() or 0)]:
                    payloads.append(message.value() or b"")
            # The position, not the last record: a transaction's commit marker (and an aborted transaction's
            # records) take offsets below the end that a read_committed reader never receives.
            positions = reader.position([TopicPartition(topic, partition) for partition in pending])
            pending = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
    finally:
        reader.close()
    if pending:
        raise TrainingError(f"reading {topic} did not reach its end within {timeout_s:.0f}s")
    labels = read_labels(labels_path) if labels_path else None
    unwrapped = [unwrap_scored_event(payload) for payload in payloads]
    return training_data_from_payloads(stream, unwrapped, f"kafka:{topic}", sample_rate, max_rows, labels)


def unwrap_scored_event(payload: bytes) -> bytes:
    """A summary topic's record (judged normal by the workers) carries the original event; take it out."""
    if not payload.startswith(b'{"type":"summary"'):
        return payload
    try:
        return bytes(decode_output(payload).event)
    except msgspec.DecodeError:
        return payload  # left for the event decoder to reject with its reason
