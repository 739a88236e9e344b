"""The decoders turn every kind of malformed input into a typed error and never raise."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts import (
    MAX_EVENT_BYTES,
    DecodeErrorKind,
    encode_event,
    encode_events,
)
from shared.streams.logs.contract import LogLine, decode_log_lines
from shared.streams.transactions.contract import decode_transactions

VALID_TRANSACTION = {
    "event_id": "tx-1",
    "user_id": "u1",
    "segment": "tight-passive",
    "amount": 12.5,
    "currency": "EUR",
    "timestamp": "2026-10-01T12:00:00Z",
    "transaction_type": "purchase",
    "channel": "mobile",
    "ip": "10.1.2.3",
    "country": "DE",
    "counterparty": "m42",
}
VALID_LOG_LINE = {
    "event_id": "log-1",
    "source_host": "dn-17",
    "session_id": "blk_-1608999687919862906",
    "timestamp": "2026-10-01T12:00:00+02:00",
    "message": "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106",
}


def with_changes(**changes: object) -> bytes:
    record = {**VALID_TRANSACTION, **changes}
    return msgspec.json.encode({k: v for k, v in record.items() if v is not ...})


def test_valid_transaction_decodes_to_typed_event() -> None:
    batch = decode_transactions([with_changes()])
    assert batch.errors == []
    (event,) = batch.events
    assert event.amount == 12.5 and event.channel == "mobile" and event.timestamp.utcoffset() is not None


@pytest.mark.parametrize(
    ("payload", "kind", "reason_fragment"),
    [
        (b"not json at all", DecodeErrorKind.NOT_JSON, "JSON"),
        (b'{"event_id": "x"', DecodeErrorKind.NOT_JSON, "truncated"),
        (with_changes(amount="twelve"), DecodeErrorKind.SCHEMA, "amount"),
        (with_changes(user_id=...), DecodeErrorKind.SCHEMA, "user_id"),
        (with_changes(amount=-5), DecodeErrorKind.SCHEMA, "amount"),
        (with_changes(amount=5e12), DecodeErrorKind.SCHEMA, "amount"),
        (with_changes(currency="euro"), DecodeErrorKind.SCHEMA, "currency"),
        (with_changes(transaction_type="theft"), DecodeErrorKind.SCHEMA, "transaction_type"),
        (with_changes(timestamp="2026-10-01T12:00:00"), DecodeErrorKind.SCHEMA, "timezone"),
        (with_changes(timestamp="1970-01-01T00:00:00Z"), DecodeErrorKind.IMPLAUSIBLE, "outside"),
        (with_changes(user_id=""), DecodeErrorKind.SCHEMA, "user_id"),
        (b"[1, 2, 3]", DecodeErrorKind.SCHEMA, "object"),
        (with_changes(counterparty="x" * (MAX_EVENT_BYTES + 1)), DecodeErrorKind.OVERSIZED, "limit"),
        (None, DecodeErrorKind.SCHEMA, "empty"),
    ],
)
def test_malformed_transaction_becomes_typed_error_with_reason(
    payload: bytes | None, kind: DecodeErrorKind, reason_fragment: str
) -> None:
    batch = decode_transactions([with_changes(), payload, with_changes(event_id="tx-2")])
    assert [event.event_id for event in batch.events] == ["tx-1", "tx-2"]
    assert batch.positions == [0, 2]
    (error,) = batch.errors
    assert error.index == 1 and error.kind is kind
    assert reason_fragment.lower() in error.reason.lower()
    assert error.raw == (payload or b"")


def test_unknown_fields_are_tolerated_so_producers_can_evolve_first() -> None:
    assert decode_transactions([with_changes(device="ios")]).errors == []


def test_log_line_contract_round_trips_and_rejects_empty_message() -> None:
    payload = msgspec.json.encode(VALID_LOG_LINE)
    (event,) = decode_log_lines([payload]).events
    assert isinstance(event, LogLine) and event.session_id.startswith("blk_")
    assert decode_log_lines([encode_event(event)]).events == [event]
    (error,) = decode_log_lines([msgspec.json.encode({**VALID_LOG_LINE, "message": ""})]).errors
    assert error.kind is DecodeErrorKind.SCHEMA


def test_jsonl_encoding_decodes_line_by_line_to_the_same_events() -> None:
    events = decode_transactions([with_changes(event_id=f"tx-{i}") for i in range(5)]).events
    assert decode_transactions(encode_events(events).splitlines()).events == events


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_decoder_never_raises_on_arbitrary_bytes(payloads: list[bytes]) -> None:
    batch = decode_transactions(payloads)
    assert len(batch.events) + len(batch.errors) == len(payloads)
    assert sorted(batch.positions + [e.index for e in batch.errors]) == list(range(len(payloads)))


@given(
    st.dictionaries(
        st.sampled_from(sorted(VALID_TRANSACTION)),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=20), st.booleans()),
    )
)
def test_decoder_never_raises_on_fields_of_any_type(changes: dict[str, object]) -> None:
    batch = decode_transactions([with_changes(**changes)])
    assert len(batch.events) + len(batch.errors) == 1
