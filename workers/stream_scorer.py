"""One stream's part of a worker's batch: consumed messages in, output records out (no Kafka calls here).

Decode (bad records become dead letters), columns, features from the entities' stored state, score
with the deployed version, encode alerts and summaries. Each stage is timed into
fleetwatch_batch_stage_seconds. Nothing here knows which stream it serves: that is the Stream's.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import redis
from confluent_kafka import Message

from shared import metrics
from shared.config import FleetwatchSettings
from shared.entity_state import EntityStates
from shared.logs import get_logger
from shared.model_version import DeployedVersion
from shared.output_records import OutputRecord, OutputTopics, ScoredEvents, Source, dead_letter, scored_records
from shared.pipeline import Stream
from shared.scoring import score_batch
from shared.state_store import EntityStateStore, StateWrite, nothing_to_store

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


def _timed(stage: Stage, step: StateWrite) -> None:
    with stage:
        step()


@dataclass(frozen=True)
class EventCounts:
    """What one stream's batch did with its events: counted into the metrics once the batch committed, so a
    batch aborted and read again is counted once."""

    stream: str
    dead_letters: Counter[str]  # by error kind
    alerts: int = 0
    summaries: int = 0

    def observe(self) -> None:
        for kind, count in self.dead_letters.items():
            metrics.DEAD_LETTERS.labels(self.stream, kind).inc(count)
        metrics.EVENTS.labels(self.stream, "deadletter").inc(self.dead_letters.total())
        metrics.EVENTS.labels(self.stream, "alert").inc(self.alerts)
        metrics.EVENTS.labels(self.stream, "summary").inc(self.summaries)


@dataclass(frozen=True)
class BatchOutputs:
    """One stream's share of a batch: its output records, the write storing its entities' states, its counts."""

    records: list[OutputRecord]
    store_states: StateWrite
    counts: EventCounts


def source_of(message: Message) -> Source:
    return Source(message.topic() or "", int(message.partition() or 0), int(message.offset() or 0))


class StreamScorer:
    """Everything one stream's batch needs between the consumed messages and the output records."""

    def __init__(self, stream: Stream[Any, Any], settings: FleetwatchSettings, states: EntityStateStore) -> None:
        stream_settings = settings.stream_settings(stream.name)  # configured, or the stream's defaults
        self.stream = stream
        self.input_topic = stream_settings.input_topic
        self._topics = OutputTopics(settings.topics.alerts, stream_settings.summary_topic, settings.topics.deadletter)
        self._top = settings.worker.top_features
        self._states = states
        self.version: DeployedVersion | None = None
        self._newest_event_s: dict[int, float] = {}  # per input partition

    def build_outputs(self, messages: list[Message]) -> BatchOutputs:
        """The batch's output records, the write that stores its entities' advanced states (the worker calls it
        once the batch before this one committed, and before this batch's outputs are produced), and its counts."""
        assert self.version is not None
        name = self.stream.name
        with Stage(name, "decode"):
            payloads = [m.value() for m in messages]
            decoded = self.stream.decode(payloads)
        outputs = []
        for error in decoded.errors:
            message = messages[error.index]
            outputs.append(dead_letter(error, message.key(), source_of(message), name, self._topics.deadletter))
        dead_letters = Counter(error.kind.value for error in decoded.errors)
        if not decoded.events:
            return BatchOutputs(outputs, nothing_to_store, EventCounts(name, dead_letters))
        valid = [messages[i] for i in decoded.positions]
        with Stage(name, "featurize"):
            columns = self.version.stream.columns(decoded.events)
        partitions = np.array([m.partition() for m in valid], dtype=np.int64)
        now_s = time.time()  # an event dated ahead of it (a producer's wrong clock) must not end every session
        for partition in np.unique(partitions).tolist():
            newest = min(float(columns.event_time_s[partitions == partition].max()), now_s)
            self._newest_event_s[partition] = max(self._newest_event_s.get(partition, -np.inf), newest)
        with Stage(name, "state"):
            raw, store_states = self._states.features_to_store(
                columns,
                partitions=partitions,
                offsets=np.array([m.offset() for m in valid], dtype=np.int64),
                stream=self.version.stream,
            )
        with Stage(name, "score"):
            scored = score_batch(self.version, raw, self._top)
        with Stage(name, "encode"):
            alerted = np.flatnonzero(scored.alert)
            context = self.version.stream.alert_context(columns.take(alerted), raw[alerted])
            batch = ScoredEvents(
                version=self.version,
                scored=scored,
                raw_features=raw,
                payloads=[payloads[i] or b"" for i in decoded.positions],
                keys=[m.key() for m in valid],
                sources=[source_of(m) for m in valid],
                entities=columns.entity.tolist(),
                context=dict(zip(alerted.tolist(), context, strict=True)),
            )
            outputs += scored_records(batch, self._topics)
        alerts = int(scored.alert.sum())
        counts = EventCounts(name, dead_letters, alerts=alerts, summaries=len(valid) - alerts)
        return BatchOutputs(outputs, partial(_timed, Stage(name, "state_write"), store_states), counts)

    def end_idle_sessions(self) -> tuple[list[OutputRecord], EntityStates]:
        """End records for the sessions idle by the newest event time this worker read from their partition, each
        to the input partition its session's state came from (`shared.idle_sessions`), and the sessions claimed
        for them: settle those after the commit."""
        assert self.version is not None
        stream = self.version.stream
        if stream.idle_deadlines(stream.empty_states()) is None:
            return [], stream.empty_states()
        try:
            states, partitions = self._states.claim_idle(self._newest_event_s, stream)
        except redis.RedisError as exc:
            log.warning("idle sessions not claimed; trying again at the next sweep", error=str(exc))
            return [], stream.empty_states()
        if not len(states):
            return [], states
        records = [
            OutputRecord(self.input_topic, key.encode(), payload, partition=int(partition))
            for key, payload, partition in zip(
                states.keys.tolist(), stream.end_records(states), partitions.tolist(), strict=True
            )
        ]
        return records, states

    def settle_idle_sessions(self, claimed: EntityStates, committed: bool) -> None:
        """After the commit that carried their end records: count the claimed sessions, or put their claims back."""
        if not len(claimed) or self.version is None:
            return
        if committed:
            metrics.IDLE_SESSIONS_ENDED.labels(self.stream.name).inc(len(claimed))
            return
        deadlines = self.version.stream.idle_deadlines(claimed)
        assert deadlines is not None
        try:
            self._states.record_idle(claimed.keys, deadlines)
        except redis.RedisError as exc:
            log.warning(
                "idle sessions not put back (they end at their next line)", error=str(exc), sessions=len(claimed)
            )
