"""Synthetic financial web-app transactions with labelled injected anomalies (seed 001).

Users fall into four segments that differ in spend (loose vs tight) and activity (passive vs
aggressive); each user has their own typical amount, active hours, habitual IPs and home country.
Everything is drawn column-wise with numpy from one seeded generator, so a seed gives the same data.

>>> data = generate_transactions(GeneratorSpec(users=50, events=400, seed=7))
>>> len(data), int(data.is_anomaly.sum()) > 0, sorted(set(data.columns["segment"].tolist()))[:2]
(400, True, ['loose-aggressive', 'loose-passive'])
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from shared.streams.transactions.contract import CHANNELS, SEGMENTS, TRANSACTION_TYPES
from shared.streams.transactions.features import TransactionColumns

COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "AT", "BE", "PT")
FOREIGN_COUNTRIES = ("NG", "RU", "BR", "VN", "KP", "IR")
CURRENCY = "EUR"
BURST_SIZE = 6
BURST_SPAN_S = 240.0


@dataclass(frozen=True)
class SegmentProfile:
    """How one segment's users behave; per-user values are drawn around these."""

    amount_median: float
    amount_log_sigma: float
    events_per_day: float
    peak_hour: float
    hour_spread: float
    type_weights: tuple[float, ...]  # in TRANSACTION_TYPES order
    channel_weights: tuple[float, ...]  # in CHANNELS order
    roaming_probability: float  # share of events from a user's secondary IPs


SEGMENT_PROFILES: dict[str, SegmentProfile] = {
    "loose-passive": SegmentProfile(180.0, 0.8, 0.4, 19.0, 2.5, (0.6, 0.1, 0.05, 0.05, 0.2), (0.6, 0.3, 0.0, 0.1), 0.1),
    "tight-passive": SegmentProfile(25.0, 0.4, 0.4, 12.0, 2.0, (0.45, 0.05, 0.1, 0.1, 0.3), (0.1, 0.3, 0.1, 0.5), 0.05),
    "loose-aggressive": SegmentProfile(
        300.0, 0.9, 4.0, 21.0, 3.0, (0.35, 0.4, 0.05, 0.1, 0.1), (0.4, 0.55, 0.0, 0.05), 0.25
    ),
    "tight-aggressive": SegmentProfile(
        40.0, 0.5, 4.0, 9.0, 2.5, (0.5, 0.05, 0.3, 0.05, 0.1), (0.05, 0.5, 0.25, 0.2), 0.15
    ),
}


class AnomalyKind(enum.StrEnum):
    AMOUNT_SPIKE = "amount_spike"
    UNUSUAL_HOUR = "unusual_hour"
    BURST = "burst"
    NEW_IP_COUNTRY = "new_ip_country"
    OTHER_SEGMENT = "other_segment"


ANOMALY_KINDS: tuple[AnomalyKind, ...] = tuple(AnomalyKind)


@dataclass(frozen=True)
class GeneratorSpec:
    users: int = 1_000_000
    events: int = 10_000_000
    anomaly_rate: float = 0.01
    days: float = 30.0
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)
    seed: int = 42
    kinds: tuple[AnomalyKind, ...] = ANOMALY_KINDS

    def __post_init__(self) -> None:
        if self.users < 1 or self.events < 1:
            raise ValueError("users and events must be at least 1")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ValueError("anomaly_rate must be in [0, 0.5)")
        if self.days <= 0:
            raise ValueError("days must be positive")


@dataclass
class SyntheticTransactions:
    """Columns of the events (time-ordered) and, apart, their ground truth."""

    columns: dict[str, np.ndarray]
    is_anomaly: np.ndarray
    anomaly_kind: np.ndarray  # "" for normal events
    users: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.is_anomaly)

    def transaction_columns(self) -> TransactionColumns:
        """The columns featurizing needs, as a decoder would hand them over."""
        c = self.columns
        return TransactionColumns.from_arrays(
            event_id=c["event_id"], user_id=c["user_id"], amount=c["amount"], timestamp_s=c["timestamp_ms"] / 1000.0,
            ip=c["ip"], transaction_type=c["transaction_type"], channel=c["channel"], segment=c["segment"],
            country=c["country"],
        )  # fmt: skip


def _choose(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, k) weight matrix, vectorized by inverse CDF."""
    cumulative = np.cumsum(weights, axis=1)
    cumulative /= cumulative[:, -1:]
    draws = rng.random(len(weights))[:, None]
    return np.minimum((draws > cumulative).sum(axis=1), weights.shape[1] - 1)


def _profile_matrix(attribute: str) -> np.ndarray:
    return np.array([getattr(SEGMENT_PROFILES[name], attribute) for name in SEGMENTS], dtype=float)


def _ip_strings(ints: np.ndarray) -> np.ndarray:
    octets = [(ints >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    # String formatting has no numpy vector form; this runs once per generated event, off any hot path.
    return np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(*(o.tolist() for o in octets), strict=True)])


def _draw_users(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    segment = rng.integers(0, len(SEGMENTS), n)
    medians = _profile_matrix("amount_median")[segment] * rng.lognormal(0.0, 0.4, n)
    peak = (_profile_matrix("peak_hour")[segment] + rng.normal(0.0, 1.5, n)) % 24
    activity = _profile_matrix("events_per_day")[segment] * rng.gamma(4.0, 0.25, n)
    ip_primary = rng.integers(0x0B000000, 0xDF000000, n, dtype=np.int64)
    ip_secondary = rng.integers(0x0B000000, 0xDF000000, n, dtype=np.int64)
    country = rng.integers(0, len(COUNTRIES), n)
    return {
        "segment": segment,
        "amount_median": medians,
        "peak_hour": peak,
        "activity": activity,
        "ip_primary": ip_primary,
        "ip_secondary": ip_secondary,
        "country": country,
    }


OPPOSITE_SEGMENT = np.array([3, 2, 1, 0])
"""Index of the behaviour least like each segment's own (loose <-> tight, passive <-> aggressive), in SEGMENTS order."""


def generate_transactions(spec: GeneratorSpec) -> SyntheticTransactions:
    rng = np.random.default_rng(spec.seed)
    users = _draw_users(rng, spec.users)

    # Which user each event belongs to: activity-weighted, then a few slots regrouped into bursts.
    weights = users["activity"] / users["activity"].sum()
    user = rng.choice(spec.users, size=spec.events, p=weights)
    kind = np.full(spec.events, "", dtype=object)
    anomalous = rng.choice(spec.events, size=round(spec.events * spec.anomaly_rate), replace=False)
    kind[anomalous] = np.array(spec.kinds, dtype=object)[rng.integers(0, len(spec.kinds), len(anomalous))]
    burst_candidates = np.flatnonzero(kind == AnomalyKind.BURST)
    usable = len(burst_candidates) // BURST_SIZE * BURST_SIZE
    burst_slots = burst_candidates[:usable].reshape(-1, BURST_SIZE)
    kind[burst_candidates[usable:]] = AnomalyKind.AMOUNT_SPIKE
    user[burst_slots] = user[burst_slots[:, :1]]

    segment = users["segment"][user]
    behaviour = segment.copy()
    swapped = kind == AnomalyKind.OTHER_SEGMENT
    behaviour[swapped] = OPPOSITE_SEGMENT[segment[swapped]]

    # Time: a day in the span, an hour near the user's peak (far from it for unusual-hour anomalies).
    day = rng.integers(0, int(np.ceil(spec.days)), spec.events)
    peak = users["peak_hour"][user]
    peak[swapped] = _profile_matrix("peak_hour")[behaviour[swapped]]
    hour = peak + rng.normal(0.0, 1.0, spec.events) * _profile_matrix("hour_spread")[behaviour]
    odd_hour = kind == AnomalyKind.UNUSUAL_HOUR
    hour[odd_hour] = peak[odd_hour] + 12.0 + rng.uniform(-1.5, 1.5, odd_hour.sum())
    seconds = day * 86400.0 + (hour % 24.0) * 3600.0
    seconds = np.minimum(seconds, spec.days * 86400.0 - 1.0)
    seconds[burst_slots] = seconds[burst_slots[:, :1]] + np.sort(
        rng.uniform(0.0, BURST_SPAN_S, burst_slots.shape), axis=1
    )

    # Amount: the user's own median with the segment's spread; spikes and swapped behaviour depart from it.
    median = users["amount_median"][user]
    median[swapped] = _profile_matrix("amount_median")[behaviour[swapped]] * rng.lognormal(0.0, 0.3, swapped.sum())
    amount = median * np.exp(rng.normal(0.0, 1.0, spec.events) * _profile_matrix("amount_log_sigma")[behaviour])
    spike = kind == AnomalyKind.AMOUNT_SPIKE
    amount[spike] *= rng.uniform(8.0, 30.0, spike.sum())
    amount = np.round(np.clip(amount, 0.5, 5e6), 2)

    transaction_type = _choose(rng, _profile_matrix("type_weights")[behaviour])
    channel = _choose(rng, _profile_matrix("channel_weights")[behaviour])

    roaming = rng.random(spec.events) < _profile_matrix("roaming_probability")[segment]
    ip = np.where(roaming, users["ip_secondary"][user], users["ip_primary"][user])
    country = np.array(COUNTRIES, dtype=object)[users["country"][user]]
    new_place = kind == AnomalyKind.NEW_IP_COUNTRY
    ip[new_place] = rng.integers(0x0B000000, 0xDF000000, new_place.sum())
    country[new_place] = np.array(FOREIGN_COUNTRIES, dtype=object)[
        rng.integers(0, len(FOREIGN_COUNTRIES), new_place.sum())
    ]

    order = np.argsort(seconds, kind="stable")
    epoch_ms = (spec.start.timestamp() + seconds[order]) * 1000.0
    columns = {
        "event_id": np.char.add(f"tx{spec.seed}-", np.arange(spec.events).astype(str)),
        "user_id": np.char.add("u", user[order].astype(str)),
        "segment": np.array(SEGMENTS)[segment[order]],
        "amount": amount[order],
        "currency": np.full(spec.events, CURRENCY),
        "timestamp_ms": epoch_ms.astype(np.int64),
        "transaction_type": np.array(TRANSACTION_TYPES)[transaction_type[order]],
        "channel": np.array(CHANNELS)[channel[order]],
        "ip": _ip_strings(ip[order]),
        "country": country[order].astype(str),
        "counterparty": np.char.add("m", rng.integers(0, 5000, spec.events).astype(str)),
    }
    kinds_sorted = kind[order].astype(str)
    return SyntheticTransactions(columns, kinds_sorted != "", kinds_sorted, users)


def segment_summary(data: SyntheticTransactions) -> list[dict[str, object]]:
    """Per segment, the behaviour of its normal events: evidence that the segments differ."""
    columns = data.columns
    hours = (columns["timestamp_ms"] // 3_600_000) % 24
    rows = []
    for name in SEGMENTS:
        mask = (columns["segment"] == name) & ~data.is_anomaly
        users = np.unique(columns["user_id"][mask])
        types, type_counts = np.unique(columns["transaction_type"][mask], return_counts=True)
        channels, channel_counts = np.unique(columns["channel"][mask], return_counts=True)
        rows.append(
            {
                "segment": name,
                "users": len(users),
                "events": int(mask.sum()),
                "events_per_user": float(mask.sum() / max(len(users), 1)),
                "median_amount": float(np.median(columns["amount"][mask])) if mask.any() else 0.0,
                "p99_amount": float(np.quantile(columns["amount"][mask], 0.99)) if mask.any() else 0.0,
                "busiest_hour": int(np.bincount(hours[mask], minlength=24).argmax()),
                "top_type": str(types[type_counts.argmax()]) if len(types) else "",
                "top_channel": str(channels[channel_counts.argmax()]) if len(channels) else "",
            }
        )
    return rows


def anomaly_counts(data: SyntheticTransactions) -> dict[str, int]:
    kinds, counts = np.unique(data.anomaly_kind[data.is_anomaly], return_counts=True)
    return {str(kind): int(count) for kind, count in zip(kinds, counts, strict=True)}
