"""Event contracts: what producers may put on the input topics, and how a batch of raw bytes is decoded.

Decoding never raises: every record comes back either as a typed event or as a `DecodeError` that
carries the reason and the original bytes, so a worker can send it to the dead-letter topic.

>>> batch = decode_transactions([b'{"nope": 1}', b"\\xff"])
>>> [e.kind.value for e in batch.errors]
['schema', 'not_json']
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar

import msgspec

MAX_EVENT_BYTES = 64 * 1024
"""Larger payloads are refused before parsing: no legitimate event of either kind comes near it."""

MAX_AMOUNT = 1e9
"""An amount above this is a unit or encoding mistake, not a transaction."""

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)

Segment = Literal["loose-passive", "tight-passive", "loose-aggressive", "tight-aggressive", "unknown"]
SEGMENTS: tuple[str, ...] = ("loose-passive", "tight-passive", "loose-aggressive", "tight-aggressive")

TransactionType = Literal["purchase", "transfer", "withdrawal", "deposit", "payment"]
TRANSACTION_TYPES: tuple[str, ...] = ("purchase", "transfer", "withdrawal", "deposit", "payment")

Channel = Literal["web", "mobile", "atm", "pos"]
CHANNELS: tuple[str, ...] = ("web", "mobile", "atm", "pos")

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
Amount = Annotated[float, msgspec.Meta(gt=0, le=MAX_AMOUNT)]
IPAddress = Annotated[str, msgspec.Meta(min_length=2, max_length=45)]
CountryCode = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Transaction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A payment event from the financial web app, keyed on the topic by `user_id`."""

    event_id: Identifier
    user_id: Identifier
    segment: Segment = "unknown"
    amount: Amount
    currency: Currency
    timestamp: AwareTime
    transaction_type: TransactionType
    channel: Channel
    ip: IPAddress
    country: CountryCode | None = None
    counterparty: Annotated[str, msgspec.Meta(max_length=128)] = ""


class LogLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A raw server log line, keyed on the topic by `session_id` (a session or HDFS-style block id)."""

    event_id: Identifier
    source_host: Identifier
    session_id: Identifier
    timestamp: AwareTime
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=16 * 1024)]


class DecodeErrorKind(enum.StrEnum):
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    OVERSIZED = "oversized"
    IMPLAUSIBLE = "implausible"


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why one record of a batch could not become an event; `raw` is kept for the dead-letter topic."""

    index: int
    kind: DecodeErrorKind
    reason: str
    raw: bytes


EventT = TypeVar("EventT", Transaction, LogLine)


@dataclass(slots=True)
class DecodedBatch(Generic[EventT]):
    """The valid events of a batch with their positions in the input, and the errors for the rest."""

    events: list[EventT] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


_TRANSACTION_DECODER = msgspec.json.Decoder(Transaction)
_LOGLINE_DECODER = msgspec.json.Decoder(LogLine)


def _plausibility_problem(event: Transaction | LogLine) -> str | None:
    ts = event.timestamp
    if not EARLIEST_EVENT_TIME <= ts < LATEST_EVENT_TIME:
        return f"timestamp {ts.isoformat()} is outside {EARLIEST_EVENT_TIME.year}..{LATEST_EVENT_TIME.year}"
    return None


def _decode(payloads: Sequence[bytes | None], decoder: msgspec.json.Decoder, max_bytes: int) -> DecodedBatch:
    batch: DecodedBatch = DecodedBatch()
    # One msgspec call per record (C speed): a record's error must not cost its neighbours.
    for index, raw in enumerate(payloads):
        if raw is None:
            batch.errors.append(DecodeError(index, DecodeErrorKind.SCHEMA, "empty record (no value)", b""))
            continue
        if len(raw) > max_bytes:
            batch.errors.append(
                DecodeError(index, DecodeErrorKind.OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}", raw)
            )
            continue
        try:
            event = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            batch.errors.append(DecodeError(index, DecodeErrorKind.SCHEMA, str(exc), raw))
            continue
        except msgspec.DecodeError as exc:
            batch.errors.append(DecodeError(index, DecodeErrorKind.NOT_JSON, str(exc), raw))
            continue
        problem = _plausibility_problem(event)
        if problem is not None:
            batch.errors.append(DecodeError(index, DecodeErrorKind.IMPLAUSIBLE, problem, raw))
            continue
        batch.events.append(event)
        batch.positions.append(index)
    return batch


def decode_transactions(
    payloads: Sequence[bytes | None], max_bytes: int = MAX_EVENT_BYTES
) -> DecodedBatch[Transaction]:
    """Decode a batch of raw transaction payloads; never raises for bad input."""
    return _decode(payloads, _TRANSACTION_DECODER, max_bytes)


def decode_log_lines(payloads: Sequence[bytes | None], max_bytes: int = MAX_EVENT_BYTES) -> DecodedBatch[LogLine]:
    """Decode a batch of raw log-line payloads; never raises for bad input."""
    return _decode(payloads, _LOGLINE_DECODER, max_bytes)


_ENCODER = msgspec.json.Encoder()


def encode_event(event: Transaction | LogLine) -> bytes:
    return _ENCODER.encode(event)


def encode_events(events: Sequence[Transaction | LogLine]) -> bytes:
    """Newline-delimited JSON for a sequence of events (the JSONL file format)."""
    return _ENCODER.encode_lines(events)
