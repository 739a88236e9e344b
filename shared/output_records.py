"""What the workers write: alert reports, summary records and dead letters.

Alert and summary records embed the original event JSON as it arrived (no re-encoding), name the
model version that scored it and where it came from. A dead letter keeps the original bytes as its
value, byte for byte, with the reason and source in headers (the convention Kafka Connect uses), so a
fixed producer can replay it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from shared.contracts import DecodeError
from shared.model_version import DeployedVersion
from shared.scoring import ScoredBatch


class Source(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class DetectorVerdict(msgspec.Struct):
    name: str
    score: float
    threshold: float
    verdict: int  # +1 normal, -1 anomaly (scikit-learn's convention)
    mode: str


class StandoutFeature(msgspec.Struct):
    name: str
    value: float
    z: float


class Contribution(msgspec.Struct):
    """A named group of features (a sensor) and its share of the residual, in [0, 1]."""

    name: str
    share: float


class AlertRecord(msgspec.Struct, tag="alert", tag_field="type"):
    stream: str
    model_version: int
    severity: str
    severity_score: float
    fired: list[str]
    detectors: list[DetectorVerdict]
    standout_features: list[StandoutFeature]
    source: Source
    detected_at: str
    event: msgspec.Raw
    contributions: list[Contribution] = msgspec.field(default_factory=list)  # streams with feature groups
    context: dict[str, Any] = msgspec.field(default_factory=dict)  # the stream's `alert_context`
    entity: str | None = None  # the key its state is kept under (a log line's session); None before 2026-12-02


class SummaryRecord(msgspec.Struct, tag="summary", tag_field="type"):
    stream: str
    model_version: int
    scores: dict[str, float]
    source: Source
    scored_at: str
    event: msgspec.Raw
    entity: str | None = None  # as in AlertRecord


class OutputRecord(msgspec.Struct, frozen=True):
    """One record for the producer. A Struct, not a frozen dataclass: one per event, built 9× faster."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]] | None = None
    partition: int = -1  # -1: the producer's partitioner picks (by key)


_ENCODER = msgspec.json.Encoder()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class OutputTopics:
    """Where one stream's outputs go."""

    alerts: str
    summary: str
    deadletter: str


@dataclass(frozen=True)
class ScoredEvents:
    """A scored batch with what its output records carry: the original payloads, keys and sources."""

    version: DeployedVersion
    scored: ScoredBatch
    raw_features: np.ndarray
    payloads: list[bytes]
    keys: list[bytes | None]
    sources: list[Source]
    entities: list[str]  # each event's entity key, as the stream's columns give it
    context: dict[int, dict[str, Any]] = field(default_factory=dict)  # alerted row -> the stream's alert context


def scored_records(batch: ScoredEvents, topics: OutputTopics) -> list[OutputRecord]:
    """One output per scored event: an alert report when any alerting detector fired, else a summary."""
    version, scored, raw_features = batch.version, batch.scored, batch.raw_features
    payloads, keys, sources, stream = batch.payloads, batch.keys, batch.sources, version.manifest.stream
    entities = batch.entities
    feature_names = version.feature_names
    names = version.detector_names
    offsets = version.offsets.tolist()
    modes = [entry.mode for entry in version.manifest.detectors]
    stamp = now_iso()
    contributions = _contributions(scored)
    scores = scored.scores.tolist()
    severity = scored.severity().tolist()
    records = []
    # One record per event is what Kafka carries; building it is the only per-event Python left.
    for row, is_alert in enumerate(scored.alert.tolist()):
        if is_alert:
            flags = scored.flags[row].tolist()
            value = _ENCODER.encode(
                AlertRecord(
                    stream=stream,
                    model_version=version.version,
                    severity=severity[row],
                    severity_score=float(scored.severity_score[row]),
                    fired=[n for n, f, m in zip(names, flags, modes, strict=True) if f and m == "alerting"],
                    detectors=[
                        DetectorVerdict(n, s, t, -1 if f else 1, m)
                        for n, s, t, f, m in zip(names, scores[row], offsets, flags, modes, strict=True)
                    ],
                    standout_features=[
                        StandoutFeature(feature_names[j], float(raw_features[row, j]), float(z))
                        for j, z in zip(scored.top_features[row].tolist(), scored.top_z[row].tolist(), strict=True)
                    ],
                    source=sources[row],
                    detected_at=stamp,
                    event=msgspec.Raw(payloads[row]),
                    contributions=contributions[row] if contributions else [],
                    context=batch.context.get(row, {}),
                    entity=entities[row],
                )
            )
            records.append(OutputRecord(topics.alerts, keys[row], value))
        else:
            value = _ENCODER.encode(
                SummaryRecord(
                    stream=stream,
                    model_version=version.version,
                    scores=dict(zip(names, scores[row], strict=True)),
                    source=sources[row],
                    scored_at=stamp,
                    event=msgspec.Raw(payloads[row]),
                    entity=entities[row],
                )
            )
            records.append(OutputRecord(topics.summary, keys[row], value))
    return records


def _contributions(scored: ScoredBatch) -> list[list[Contribution]] | None:
    """Each row's named groups by share of the residual (empty for summaries); None for a stream without groups."""
    if scored.top_groups is None or scored.top_group_shares is None:
        return None
    names = scored.group_names
    return [
        [Contribution(names[g], round(share, 4)) for g, share in zip(groups, shares, strict=True) if g >= 0]
        for groups, shares in zip(scored.top_groups.tolist(), scored.top_group_shares.tolist(), strict=True)
    ]


def dead_letter(error: DecodeError, key: bytes | None, source: Source, stream: str, topic: str) -> OutputRecord:
    headers: list[tuple[str, str | bytes | None]] = [
        ("fleetwatch.stream", stream.encode()),
        ("fleetwatch.error.kind", error.kind.value.encode()),
        ("fleetwatch.error.reason", error.reason.encode()),
        ("fleetwatch.source.topic", source.topic.encode()),
        ("fleetwatch.source.partition", str(source.partition).encode()),
        ("fleetwatch.source.offset", str(source.offset).encode()),
        ("fleetwatch.failed_at", now_iso().encode()),
    ]
    return OutputRecord(topic, key, error.raw, headers)


OutputRecordValue = AlertRecord | SummaryRecord
_DECODER = msgspec.json.Decoder(OutputRecordValue)


def decode_output(value: bytes) -> AlertRecord | SummaryRecord:
    """For downstream readers and tests: an output record back into its typed form."""
    return _DECODER.decode(value)
