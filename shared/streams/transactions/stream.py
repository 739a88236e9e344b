"""Financial transactions (seed 001) as a Stream: per-user profiles, five voting detectors, three specialists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.contracts import DecodedBatch
from shared.entity_state import EntityStates
from shared.pipeline import Stream, StreamTopics, SyntheticEvents, WindowDimensions
from shared.streams.transactions.contract import Transaction, decode_transactions
from shared.streams.transactions.features import FEATURE_SPEC, TransactionColumns, advance_profiles
from shared.streams.transactions.files import transaction_payloads
from shared.streams.transactions.profiles import PROFILE_LAYOUT
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions


class TransactionStream(Stream[Transaction, TransactionColumns]):
    name = "transactions"
    feature_spec = FEATURE_SPEC
    state_layout = PROFILE_LAYOUT
    topics = StreamTopics(input="events.transactions", summary="summary.transactions")
    windows = WindowDimensions(
        entity="user_id", time="timestamp", dimensions=("segment", "transaction_type"), measure="amount"
    )
    alert_fields = ("event_id", "user_id", "segment", "amount", "transaction_type", "channel")
    default_detectors = (
        # Fixed seeds: the same data and configuration give the same version.
        {"name": "iforest", "kind": "isolation_forest", "params": {"n_estimators": 100, "random_state": 0}},
        {"name": "ocsvm", "kind": "ocsvm", "params": {"random_state": 0}},
        {"name": "autoencoder", "kind": "autoencoder", "params": {"random_state": 0}},
        {"name": "robust_z", "kind": "robust_zscore", "params": {}},
        {"name": "pca", "kind": "pca", "params": {}},  # off the rows' principal subspace: one product per batch
        # Specialists: one piece of evidence each, alerting alone (the five above vote; these would be outvoted).
        {"name": "amount_vs_user", "kind": "feature_extreme", "features": ["amount_z_vs_user"], "specialist": True},
        {"name": "hour_vs_user", "kind": "feature_extreme", "features": ["hour_off_user_habit"], "specialist": True},
        {"name": "user_burst", "kind": "feature_extreme", "features": ["user_tx_last_hour"], "specialist": True},
    )

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch[Transaction]:
        return decode_transactions(payloads)

    def columns(self, events: Sequence[Transaction]) -> TransactionColumns:
        return TransactionColumns.from_events(events)

    def advance(self, before: EntityStates, columns: TransactionColumns) -> tuple[np.ndarray, EntityStates]:
        return advance_profiles(before, columns)

    def report_table(self, columns: TransactionColumns) -> dict[str, Any]:
        return {
            "event_id": columns.event_id.tolist(),
            "user_id": columns.user_id.tolist(),
            "segment": columns.segment.tolist(),
            "amount": columns.amount,
            "transaction_type": columns.transaction_type.tolist(),
            "channel": columns.channel.tolist(),
            "ip": columns.ip.tolist(),
        }

    def synthetic(self, events: int, entities: int, anomaly_rate: float, seed: int) -> SyntheticEvents:
        data = generate_transactions(GeneratorSpec(users=entities, events=events, anomaly_rate=anomaly_rate, seed=seed))
        return SyntheticEvents(
            payloads=transaction_payloads(data, 0, len(data)),
            keys=data.columns["user_id"].tolist(),
            event_id=data.columns["event_id"],
            is_anomaly=data.is_anomaly,
            anomaly_kind=data.anomaly_kind,
        )


TRANSACTIONS = TransactionStream()
