"""Decoding a batch of raw bytes into typed events, for any stream: the machinery every contract shares.

Decoding never raises: every record comes back either as a typed event or as a `DecodeError` that
carries the reason and the original bytes, so a worker can send it to the dead-letter topic. A stream
supplies its event type (a msgspec Struct with an aware `timestamp`); `JsonBatchDecoder` does the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

import msgspec

MAX_EVENT_BYTES = 64 * 1024
"""Larger payloads are refused before parsing: no legitimate event of any kind comes near it."""

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


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


EventT = TypeVar("EventT")


@dataclass(slots=True)
class DecodedBatch(Generic[EventT]):
    """The valid events of a batch with their positions in the input, and the errors for the rest."""

    events: list[EventT] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


def _plausibility_problem(timestamp: datetime) -> str | None:
    if not EARLIEST_EVENT_TIME <= timestamp < LATEST_EVENT_TIME:
        return f"timestamp {timestamp.isoformat()} is outside {EARLIEST_EVENT_TIME.year}..{LATEST_EVENT_TIME.year}"
    return None


class JsonBatchDecoder(Generic[EventT]):
    """Decodes JSON payloads into `event_type` (a msgspec Struct with a `timestamp`); never raises."""

    def __init__(self, event_type: type[EventT], max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._decoder = msgspec.json.Decoder(event_type)
        self._max_bytes = max_bytes

    def __call__(self, payloads: Sequence[bytes | None]) -> DecodedBatch[EventT]:
        batch: DecodedBatch[EventT] = DecodedBatch()
        # One msgspec call per record (C speed): a record's error must not cost its neighbours.
        for index, raw in enumerate(payloads):
            if raw is None:
                batch.errors.append(DecodeError(index, DecodeErrorKind.SCHEMA, "empty record (no value)", b""))
                continue
            if len(raw) > self._max_bytes:
                batch.errors.append(
                    DecodeError(index, DecodeErrorKind.OVERSIZED, f"{len(raw)} bytes > limit {self._max_bytes}", raw)
                )
                continue
            try:
                event = self._decoder.decode(raw)
            except msgspec.ValidationError as exc:
                batch.errors.append(DecodeError(index, DecodeErrorKind.SCHEMA, str(exc), raw))
                continue
            except msgspec.DecodeError as exc:
                batch.errors.append(DecodeError(index, DecodeErrorKind.NOT_JSON, str(exc), raw))
                continue
            problem = _plausibility_problem(event.timestamp)  # type: ignore[attr-defined]
            if problem is not None:
                batch.errors.append(DecodeError(index, DecodeErrorKind.IMPLAUSIBLE, problem, raw))
                continue
            batch.events.append(event)
            batch.positions.append(index)
        return batch


_ENCODER = msgspec.json.Encoder()


def encode_event(event: msgspec.Struct) -> bytes:
    return _ENCODER.encode(event)


def encode_events(events: Sequence[msgspec.Struct]) -> bytes:
    """Newline-delimited JSON for a sequence of events (the JSONL file format)."""
    return _ENCODER.encode_lines(events)
