"""The transaction contract: what producers may put on `events.transactions` (JSON, keyed by `user_id`).

>>> batch = decode_transactions([b'{"nope": 1}', b"\\xff"])
>>> [e.kind.value for e in batch.errors]
['schema', 'not_json']
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.contracts import AwareTime, Identifier, JsonBatchDecoder

MAX_AMOUNT = 1e9
"""An amount above this is a unit or encoding mistake, not a transaction."""

Segment = Literal["loose-passive", "tight-passive", "loose-aggressive", "tight-aggressive", "unknown"]
SEGMENTS: tuple[str, ...] = ("loose-passive", "tight-passive", "loose-aggressive", "tight-aggressive")

TransactionType = Literal["purchase", "transfer", "withdrawal", "deposit", "payment"]
TRANSACTION_TYPES: tuple[str, ...] = ("purchase", "transfer", "withdrawal", "deposit", "payment")

Channel = Literal["web", "mobile", "atm", "pos"]
CHANNELS: tuple[str, ...] = ("web", "mobile", "atm", "pos")

Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
Amount = Annotated[float, msgspec.Meta(gt=0, le=MAX_AMOUNT)]
IPAddress = Annotated[str, msgspec.Meta(min_length=2, max_length=45)]
CountryCode = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")]


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


decode_transactions = JsonBatchDecoder(Transaction)
"""Decode a batch of raw transaction payloads; never raises for bad input."""
