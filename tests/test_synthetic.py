"""The generator gives the four segments distinct behaviour and labels every injected anomaly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.event_files import labels_path_for, read_labels, read_payloads
from shared.streams.transactions.contract import decode_transactions
from shared.streams.transactions.files import write_labels, write_transactions
from shared.streams.transactions.synthetic import (
    BURST_SIZE,
    BURST_SPAN_S,
    AnomalyKind,
    GeneratorSpec,
    generate_transactions,
    segment_summary,
)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate_transactions(GeneratorSpec(users=2_000, events=60_000, anomaly_rate=0.02, seed=3))


def test_same_seed_gives_same_data_and_another_seed_does_not() -> None:
    spec = GeneratorSpec(users=300, events=3_000, seed=11)
    first, second = generate_transactions(spec), generate_transactions(spec)
    for name in first.columns:
        np.testing.assert_array_equal(first.columns[name], second.columns[name])
    np.testing.assert_array_equal(first.anomaly_kind, second.anomaly_kind)
    other = generate_transactions(GeneratorSpec(users=300, events=3_000, seed=12))
    assert not np.array_equal(first.columns["amount"], other.columns["amount"])


def test_segments_differ_in_spend_and_activity(data) -> None:  # type: ignore[no-untyped-def]
    rows = {row["segment"]: row for row in segment_summary(data)}
    for activity in ("passive", "aggressive"):
        assert rows[f"loose-{activity}"]["median_amount"] > 3 * rows[f"tight-{activity}"]["median_amount"]
    for spend in ("loose", "tight"):
        assert rows[f"{spend}-aggressive"]["events_per_user"] > 3 * rows[f"{spend}-passive"]["events_per_user"]
    assert len({row["busiest_hour"] for row in rows.values()}) >= 3
    assert len({(row["top_type"], row["top_channel"]) for row in rows.values()}) >= 3


def test_every_kind_of_anomaly_is_injected_and_labelled(data) -> None:  # type: ignore[no-untyped-def]
    kinds = set(data.anomaly_kind[data.is_anomaly].tolist())
    assert kinds == {kind.value for kind in AnomalyKind}
    assert 0.015 < data.is_anomaly.mean() < 0.025
    assert set(data.anomaly_kind[~data.is_anomaly].tolist()) == {""}


def test_anomalies_depart_from_the_users_own_behaviour(data) -> None:  # type: ignore[no-untyped-def]
    amount, user = data.columns["amount"], data.columns["user_id"]
    normal = ~data.is_anomaly
    users, inverse = np.unique(user, return_inverse=True)
    median = np.array([np.median(amount[normal & (inverse == i)]) if (normal & (inverse == i)).any() else np.nan
                       for i in range(len(users))])  # fmt: skip
    spikes = data.anomaly_kind == AnomalyKind.AMOUNT_SPIKE
    ratio = amount[spikes] / median[inverse[spikes]]
    assert np.nanmedian(ratio) > 5

    foreign = data.anomaly_kind == AnomalyKind.NEW_IP_COUNTRY
    assert not set(data.columns["country"][foreign].tolist()) & set(data.columns["country"][normal].tolist())


def test_bursts_are_one_user_within_minutes(data) -> None:  # type: ignore[no-untyped-def]
    burst = np.flatnonzero(data.anomaly_kind == AnomalyKind.BURST)
    assert len(burst) % BURST_SIZE == 0 and len(burst) > 0
    by_user: dict[str, list[int]] = {}
    for index in burst:
        by_user.setdefault(data.columns["user_id"][index], []).append(int(data.columns["timestamp_ms"][index]))
    spans = [max(times) - min(times) for times in by_user.values() if len(times) == BURST_SIZE]
    assert spans and max(spans) <= BURST_SPAN_S * 1000


def test_events_are_time_ordered_and_valid_against_the_contract(tmp_path: Path) -> None:
    data = generate_transactions(GeneratorSpec(users=200, events=2_000, seed=5))
    assert np.all(np.diff(data.columns["timestamp_ms"]) >= 0)
    for suffix in (".jsonl", ".parquet"):
        path = tmp_path / f"events{suffix}"
        write_transactions(data, path)
        batch = decode_transactions(read_payloads(path))
        assert batch.errors == []
        assert [e.event_id for e in batch.events] == data.columns["event_id"].tolist()
        assert [e.amount for e in batch.events] == pytest.approx(data.columns["amount"].tolist())


def test_labels_live_in_their_own_file_and_never_in_the_events(tmp_path: Path) -> None:
    data = generate_transactions(GeneratorSpec(users=200, events=2_000, seed=5))
    events_path = tmp_path / "day.jsonl"
    write_transactions(data, events_path)
    write_labels(data, labels_path_for(events_path))
    assert labels_path_for(events_path).name == "day.labels.jsonl"
    assert b"anomaly" not in events_path.read_bytes()
    labels = read_labels(labels_path_for(events_path))
    assert sum(flag for flag, _ in labels.values()) == int(data.is_anomaly.sum())


@pytest.mark.parametrize("bad", [{"users": 0}, {"events": 0}, {"anomaly_rate": 0.7}, {"days": 0}])
def test_impossible_specs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GeneratorSpec(**bad)  # type: ignore[arg-type]
