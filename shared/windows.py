"""Tumbling event-time windows over scored outputs: what a window holds, when it closes, what it reports.

Pure functions over JSON-able dicts, so the same state lives in a changelog-backed table (the
summarizer), in memory (`fleetwatch report` over a scored Parquet) and in tests. A window
[start, start + size) closes once the watermark (max event time seen minus the allowed lateness)
reaches its end; events for an already closed window are late and dropped.

>>> spec = WindowSpec(sizes_s=(60,), lateness_s=0)
>>> state: dict = {}
>>> item = ScoredItem("transactions", False, 30.0, "u1", "tight-passive", "purchase", 10.0, {"iforest": 0.2})
>>> fold_items(spec, state, [item]).escalations
[]
>>> [r["normal"]["count"] for r in close_windows(spec, state, "transactions", 60.0).reports]
[1]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from shared.output_records import AlertRecord, decode_output

DEFAULT_SCORE_BIN_EDGES: tuple[float, ...] = (-10.0, -5.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Fixed histogram edges on `score_samples` (higher = more normal); two more bins catch under- and overflow."""

TOP_ENTITIES = 10


@dataclass(frozen=True)
class WindowSpec:
    """Window sizes, allowed lateness, and the rate and entity criteria (applied to `rate_window_s`)."""

    sizes_s: tuple[int, ...] = (60, 3600)
    lateness_s: float = 5.0
    score_bin_edges: tuple[float, ...] = DEFAULT_SCORE_BIN_EDGES
    rate_window_s: int | None = None  # default: the smallest size
    rate_min_alerts: int = 100
    rate_baseline_multiple: float = 3.0
    rate_baseline_windows: int = 10
    rate_baseline_min_windows: int = 3
    entity_max_alerts: int = 5

    @property
    def rate_size_s(self) -> int:
        return self.rate_window_s if self.rate_window_s is not None else min(self.sizes_s)


@dataclass(frozen=True)
class ScoredItem:
    """The part of an alert or summary record the windows need; `event_time_s` is the event's own time."""

    stream: str
    is_alert: bool
    event_time_s: float
    user: str
    segment: str
    transaction_type: str
    amount: float
    scores: dict[str, float]
    fired: tuple[str, ...] = ()
    severity: str = ""


@dataclass
class ClosedWindows:
    reports: list[dict[str, Any]] = field(default_factory=list)
    rate_alerts: list[dict[str, Any]] = field(default_factory=list)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def window_start(event_time_s: float, size_s: int) -> int:
    return int(event_time_s // size_s) * size_s


def key_id(size_s: int, start: int, stream: str, segment: str, transaction_type: str) -> str:
    return f"key|{size_s}|{start}|{stream}|{segment}|{transaction_type}"


def stream_id(size_s: int, start: int, stream: str) -> str:
    return f"stream|{size_s}|{start}|{stream}"


def watermark_id(stream: str) -> str:
    return f"watermark|{stream}"


def open_index_id(stream: str) -> str:
    return f"open|{stream}"


def baseline_id(stream: str) -> str:
    return f"baseline|{stream}"


def _new_key_state(spec: WindowSpec, size_s: int, start: int, item: ScoredItem) -> dict[str, Any]:
    return {
        "stream": item.stream,
        "segment": item.segment,
        "transaction_type": item.transaction_type,
        "window_s": size_s,
        "start": start,
        "normal": {"count": 0, "amount_sum": 0.0, "users": [], "histograms": {}},
        "alerts": {"count": 0, "by_detector": {}, "severity": {}, "entities": {}},
    }


def _new_stream_state(size_s: int, start: int, stream: str) -> dict[str, Any]:
    return {"stream": stream, "window_s": size_s, "start": start, "scored": 0, "alerts": 0,
            "by_detector": {}, "entities": {}, "escalated": []}  # fmt: skip


def _bin_index(edges: tuple[float, ...], score: float) -> int:
    return int(np.searchsorted(np.asarray(edges), score, side="right"))


def _add_to_key(spec: WindowSpec, state: dict[str, Any], item: ScoredItem) -> None:
    if item.is_alert:
        alerts = state["alerts"]
        alerts["count"] += 1
        for name in item.fired:
            alerts["by_detector"][name] = alerts["by_detector"].get(name, 0) + 1
        alerts["severity"][item.severity] = alerts["severity"].get(item.severity, 0) + 1
        alerts["entities"][item.user] = alerts["entities"].get(item.user, 0) + 1
        return
    normal = state["normal"]
    normal["count"] += 1
    normal["amount_sum"] += item.amount
    if item.user not in normal["users"]:
        normal["users"].append(item.user)
    bins = len(spec.score_bin_edges) + 1
    for name, score in item.scores.items():
        histogram = normal["histograms"].setdefault(name, [0] * bins)
        histogram[_bin_index(spec.score_bin_edges, score)] += 1


def _add_to_stream(spec: WindowSpec, state: dict[str, Any], item: ScoredItem) -> dict[str, Any] | None:
    """Count the item; return an entity escalation when this alert takes its user past the limit."""
    state["scored"] += 1
    if not item.is_alert:
        return None
    state["alerts"] += 1
    for name in item.fired:
        state["by_detector"][name] = state["by_detector"].get(name, 0) + 1
    count = state["entities"].get(item.user, 0) + 1
    state["entities"][item.user] = count
    if count > spec.entity_max_alerts and item.user not in state["escalated"]:
        state["escalated"].append(item.user)
        start, size = state["start"], state["window_s"]
        return {"type": "entity_escalation", "stream": item.stream, "user_id": item.user, "window_s": size,
                "window_start": iso(start), "window_end": iso(start + size), "alerts": count,
                "limit": spec.entity_max_alerts, "raised_at": datetime.now(UTC).isoformat()}  # fmt: skip
    return None


@dataclass
class FoldOutcome:
    escalations: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0


def fold_items(spec: WindowSpec, state: MutableMapping[str, Any], items: list[ScoredItem]) -> FoldOutcome:
    """Fold items into the open windows of `state` (mutated); return the entity escalations they raise.

    An item whose window has already closed for its stream is late: dropped from that window, counted.
    """
    outcome = FoldOutcome()
    # Each item touches a handful of dict entries keyed by its own fields; nothing here vectorizes.
    for item in items:
        watermark = state.get(watermark_id(item.stream))
        open_index = state.setdefault(open_index_id(item.stream), [])
        for size_s in spec.sizes_s:
            start = window_start(item.event_time_s, size_s)
            closed_before = watermark is not None and start + size_s <= watermark - spec.lateness_s
            if closed_before:
                outcome.late += 1
                continue
            kid = key_id(size_s, start, item.stream, item.segment, item.transaction_type)
            if kid not in state:
                state[kid] = _new_key_state(spec, size_s, start, item)
                open_index.append(kid)
            _add_to_key(spec, state[kid], item)
            if size_s == spec.rate_size_s:
                sid = stream_id(size_s, start, item.stream)
                if sid not in state:
                    state[sid] = _new_stream_state(size_s, start, item.stream)
                    open_index.append(sid)
                escalation = _add_to_stream(spec, state[sid], item)
                if escalation is not None:
                    outcome.escalations.append(escalation)
        state[watermark_id(item.stream)] = max(watermark or item.event_time_s, item.event_time_s)
    return outcome


def _top(counts: dict[str, int], n: int = TOP_ENTITIES) -> list[list[Any]]:
    return [[name, count] for name, count in Counter(counts).most_common(n)]


def key_report(spec: WindowSpec, state: dict[str, Any]) -> dict[str, Any]:
    """The `reports.summary` record of one closed (window, stream, segment, transaction type)."""
    normal, alerts = state["normal"], state["alerts"]
    scored = normal["count"] + alerts["count"]
    return {
        "type": "window_summary",
        "stream": state["stream"],
        "segment": state["segment"],
        "transaction_type": state["transaction_type"],
        "window_s": state["window_s"],
        "window_start": iso(state["start"]),
        "window_end": iso(state["start"] + state["window_s"]),
        "scored": scored,
        "anomaly_rate": alerts["count"] / scored if scored else 0.0,
        "normal": {
            "count": normal["count"],
            "amount_sum": normal["amount_sum"],
            "amount_mean": normal["amount_sum"] / normal["count"] if normal["count"] else 0.0,
            "distinct_users": len(normal["users"]),
            "score_bin_edges": list(spec.score_bin_edges),
            "score_histograms": normal["histograms"],
        },
        "alerts": {
            "count": alerts["count"],
            "by_detector": alerts["by_detector"],
            "severity": alerts["severity"],
            "top_entities": _top(alerts["entities"]),
        },
    }


def rate_verdict(spec: WindowSpec, state: dict[str, Any], baseline_rates: list[float]) -> dict[str, Any] | None:
    """A `rate_alert` record when the stream's window passes the absolute or the relative criterion."""
    scored, alerts = state["scored"], state["alerts"]
    rate = alerts / scored if scored else 0.0
    usable = baseline_rates[-spec.rate_baseline_windows :]
    baseline = float(np.mean(usable)) if len(usable) >= spec.rate_baseline_min_windows else None
    reasons = []
    if alerts >= spec.rate_min_alerts:
        reasons.append("absolute")
    if baseline is not None and baseline > 0 and rate > spec.rate_baseline_multiple * baseline:
        reasons.append("relative")
    if not reasons:
        return None
    start, size = state["start"], state["window_s"]
    return {"type": "rate_alert", "stream": state["stream"], "window_s": size, "window_start": iso(start),
            "window_end": iso(start + size), "alerts": alerts, "scored": scored, "rate": rate,
            "baseline": baseline, "criteria": reasons, "top_entities": _top(state["entities"]),
            "top_detectors": _top(state["by_detector"]), "raised_at": datetime.now(UTC).isoformat()}  # fmt: skip


def close_windows(
    spec: WindowSpec, state: MutableMapping[str, Any], stream: str, up_to_s: float | None = None
) -> ClosedWindows:
    """Close the stream's windows whose end is at or before the watermark (or `up_to_s`); remove them."""
    watermark = state.get(watermark_id(stream))
    if watermark is None:
        return ClosedWindows()
    limit = up_to_s if up_to_s is not None else watermark - spec.lateness_s
    closed = ClosedWindows()
    still_open = []
    # Oldest first, so that each stream window's baseline holds only the windows before it.
    for entry in sorted(state.get(open_index_id(stream), []), key=lambda e: state[e]["start"]):
        window = state[entry]
        if window["start"] + window["window_s"] > limit:
            still_open.append(entry)
            continue
        del state[entry]
        if entry.startswith("key|"):
            closed.reports.append(key_report(spec, window))
        else:
            baseline = state.get(baseline_id(stream), [])
            verdict = rate_verdict(spec, window, baseline)
            if verdict is not None:
                closed.rate_alerts.append(verdict)
            rate = window["alerts"] / window["scored"] if window["scored"] else 0.0
            state[baseline_id(stream)] = ([*baseline, rate])[-spec.rate_baseline_windows :]
    state[open_index_id(stream)] = still_open
    closed.reports.sort(key=lambda r: (r["window_start"], r["window_s"], r["segment"], r["transaction_type"]))
    return closed


class _EventFields(msgspec.Struct, forbid_unknown_fields=False):
    """What the windows read of the embedded event; log lines have a session instead of a user."""

    timestamp: datetime
    user_id: str = ""
    session_id: str = ""
    segment: str = "-"
    transaction_type: str = "-"
    amount: float = 0.0


_EVENT_DECODER = msgspec.json.Decoder(_EventFields)


def scored_item(value: bytes) -> ScoredItem | None:
    """An alert or summary record as a window item; None for anything else (rate alerts, foreign records)."""
    try:
        record = decode_output(value)
        event = _EVENT_DECODER.decode(record.event)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    common: dict[str, Any] = {
        "stream": record.stream,
        "event_time_s": event.timestamp.timestamp(),
        "user": event.user_id or event.session_id,
        "segment": event.segment,
        "transaction_type": event.transaction_type,
        "amount": event.amount,
    }
    if isinstance(record, AlertRecord):
        scores = {d.name: d.score for d in record.detectors}
        return ScoredItem(is_alert=True, scores=scores, fired=tuple(record.fired), severity=record.severity, **common)
    return ScoredItem(is_alert=False, scores=dict(record.scores), **common)
