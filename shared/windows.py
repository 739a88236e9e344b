"""Tumbling event-time windows over scored outputs: what a window holds, when it closes, what it reports.

Pure functions over msgpack-able dicts, so the same state lives in a changelog-backed table (the
summarizer), in memory (`fleetwatch report` over a scored Parquet) and in tests. A window
[start, start + size) closes once the watermark, less the allowed lateness, reaches its end; events for an
already closed window are late and dropped. The watermark is the event time every active origin (the input
partition a worker read the event from) has reached: the least of their newest event times, so one partition
running ahead does not close the windows another, lagging one (a worker failover, a backlog) still fills. An
origin silent for `idle_origin_s` of wall clock no longer holds it back, and the watermark never goes back.

Aggregation is in two steps: `partials_of` folds a batch of items into one partial window per
(window, key) and per stream window, leaving out items a window already holds (replays), and
`merge_partials` adds the partials into the open windows, or counts them late. A window's state
therefore changes once per batch, not once per event.
Windows are keyed by the stream's summary dimensions (`shared.pipeline.WindowDimensions`: for
transactions, segment and transaction type), so nothing here knows a stream's fields.
Distinct entities are a HyperLogLog sketch (p = 12: about 1.6 % standard error, exact-ish below a few
hundred users) and alert counts are kept for at most twice `TRACKED_ENTITIES` entities, so a window's state
stays bounded whatever the traffic.

>>> spec = WindowSpec(sizes_s=(60,), lateness_s=0)
>>> state: dict = {}
>>> item = ScoredItem("transactions", False, 30.0, "u1", {"segment": "tight-passive"}, 10.0, {"iforest": 0.2})
>>> fold_items(spec, state, [item]).escalations
[]
>>> [r["normal"]["count"] for r in close_windows(spec, state, "transactions", 60.0).reports]
[1]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from datasketch import HyperLogLogPlusPlus

from shared.output_records import AlertRecord, decode_output
from shared.streams.catalog import CATALOG

DEFAULT_SCORE_BIN_EDGES: tuple[float, ...] = (-10.0, -5.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Fixed histogram edges on `score_samples` (higher = more normal); two more bins catch under- and overflow."""

TOP_ENTITIES = 10
TRACKED_ENTITIES = 1000
"""Alerting entities a window keeps counts of: an alert storm over many entities must not grow a window's one
changelog record past the broker's limit (40,000 of them made one hour's record 600 kB). Past twice as many, the
most counted stay; one dropped and seen again counts from zero, so top entities and escalations may undercount in
such a storm, never overcount."""
HLL_PRECISION = 12


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
    rate_relative_min_alerts: int = 5
    entity_max_alerts: int = 5
    idle_origin_s: float = 60.0

    @property
    def rate_size_s(self) -> int:
        return self.rate_window_s if self.rate_window_s is not None else min(self.sizes_s)


@dataclass(frozen=True)
class ScoredItem:
    """The part of an alert or summary record the windows need; `event_time_s` is the event's own time,
    `dimensions` the values of the stream's summary dimensions, `measure` its summed field (0 if none)."""

    stream: str
    is_alert: bool
    event_time_s: float
    entity: str
    dimensions: dict[str, str]
    measure: float
    scores: dict[str, float]
    fired: tuple[str, ...] = ()
    severity: str = ""
    source: str = ""  # "topic:partition" the record was read from (empty: a file, no replays)
    offset: int = -1  # its offset there: a window counts each (source, offset) once
    origin: str = ""  # "topic:partition" the worker read the event from: the watermark's unit


@dataclass
class ClosedWindows:
    reports: list[dict[str, Any]] = field(default_factory=list)
    rate_alerts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FoldOutcome:
    """The escalations a fold raised, and its records by what became of them in the smallest window size (each
    record is in one window of every size: counting one size counts each record once)."""

    escalations: list[dict[str, Any]] = field(default_factory=list)
    alerts: int = 0
    normal: int = 0
    late: int = 0  # its smallest window had closed: dropped from that one


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def window_start(event_time_s: float, size_s: int) -> int:
    return int(event_time_s // size_s) * size_s


def key_id(size_s: int, start: int, stream: str, dimensions: dict[str, str]) -> str:
    values = "|".join(f"{name}={value.replace('|', '/')}" for name, value in sorted(dimensions.items()))
    return f"key|{size_s}|{start}|{stream}|{values}"


def stream_id(size_s: int, start: int, stream: str) -> str:
    return f"stream|{size_s}|{start}|{stream}"


def watermark_id(stream: str) -> str:
    return f"watermark|{stream}"


def origins_id(stream: str) -> str:
    """The stream's active origins: {origin: [newest event time, wall clock when last seen]}."""
    return f"origins|{stream}"


def _windows_ending_by(state: MutableMapping[str, Any], stream: str, limit_s: float) -> list[str]:
    """The stream's windows that end at or before `limit_s`, oldest first, found from the keys alone.

    Every window is a key of `state` (no separate index to keep in step, so a state written key by key
    is consistent after any crash), and its id holds its size and start: the windows that stay open
    are not read, so the summarizer neither decodes nor rewrites them.
    """
    ids = [key.split("|") for key in list(state) if key.startswith(("key|", "stream|"))]
    ending = [p for p in ids if p[3] == stream and int(p[2]) + int(p[1]) <= limit_s]
    return ["|".join(parts) for parts in sorted(ending, key=lambda p: int(p[2]))]


def baseline_id(stream: str) -> str:
    """The stream's last windows' [alerts, scored] (a new key: before 2026-12-02 it held rates, under `baseline|`)."""
    return f"rate-baseline|{stream}"


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


def _keep_tracked(counts: dict[str, int]) -> None:
    """Past twice `TRACKED_ENTITIES` entities, keep the `TRACKED_ENTITIES` most counted (in place)."""
    if len(counts) > 2 * TRACKED_ENTITIES:
        kept = heapq.nlargest(TRACKED_ENTITIES, counts.items(), key=lambda entry: entry[1])
        counts.clear()
        counts.update(kept)


def _users_sketch(users: set[str]) -> dict[str, bytes]:
    """A batch's users as a sparse HyperLogLog: only the registers they set (a partial stays small)."""
    sketch = HyperLogLogPlusPlus(p=HLL_PRECISION)
    for user in users:
        sketch.update(user.encode())
    at = np.flatnonzero(sketch.reg).astype(np.uint16)
    return {"at": at.tobytes(), "rank": sketch.reg[at].astype(np.int8).tobytes()}


def _merge_sketches(dense: bytes, sparse: dict[str, bytes]) -> bytes:
    """A window's dense registers (empty bytes: none yet) with a partial's sparse ones added."""
    registers = np.frombuffer(dense, dtype=np.int8).copy() if dense else np.zeros(1 << HLL_PRECISION, np.int8)
    at = np.frombuffer(sparse["at"], dtype=np.uint16)
    registers[at] = np.maximum(registers[at], np.frombuffer(sparse["rank"], dtype=np.int8))
    return registers.tobytes()


def distinct_users(sketch: bytes) -> int:
    registers = np.frombuffer(sketch, dtype=np.int8).copy()
    return round(HyperLogLogPlusPlus(reg=registers).count()) if registers.any() else 0


def _empty_key(size_s: int, start: int, stream: str, dimensions: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "key", "stream": stream, "dimensions": dict(dimensions),
        "window_s": size_s, "start": start, "applied": {},
        # users: a window's dense HyperLogLog registers of entities; a partial's sparse ones (`_users_sketch`).
        "normal": {"count": 0, "measure_sum": 0.0, "users": b"", "histograms": {}},
        "alerts": {"count": 0, "by_detector": {}, "severity": {}, "entities": {}},
    }  # fmt: skip


def _empty_stream(size_s: int, start: int, stream: str) -> dict[str, Any]:
    return {"kind": "stream", "stream": stream, "window_s": size_s, "start": start, "applied": {}, "scored": 0,
            "alerts": 0, "by_detector": {}, "entities": {}, "escalated": []}  # fmt: skip


def _is_new(applied: dict[str, int], item: ScoredItem) -> bool:
    return item.offset < 0 or item.offset > applied.get(item.source, -1)


def _applied(partial: dict[str, Any], item: ScoredItem) -> None:
    if item.offset >= 0:
        partial["applied"][item.source] = max(partial["applied"].get(item.source, -1), item.offset)


def partials_of(
    spec: WindowSpec, items: list[ScoredItem], state: Mapping[str, Any] | None = None, now_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """One partial window per (window, key) and per stream window the items touch, plus each stream's
    newest event time per origin under `watermark_id(stream)`. With the wall clock's `now_s`, the
    candidate stops there: an item dated after it (a producer whose clock is ahead, by seconds or by years)
    would otherwise close the open windows early, or all at once, and make the items after it late; the item
    itself still lands in its window, which closes when real time gets there.

    Items a window of `state` already holds (offset not newer than the newest it folded from that
    source) are replays, read again after a restart from the last committed offset; they are left out.
    """
    partials: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[str, int]] = {}
    users: dict[str, set[str]] = {}

    def is_new(window_id: str, item: ScoredItem) -> bool:
        if window_id not in held:
            held[window_id] = state[window_id]["applied"] if state is not None and window_id in state else {}
        return _is_new(held[window_id], item)

    clock_s = math.inf if now_s is None else now_s
    # Each item touches a handful of dict entries keyed by its own fields; nothing here vectorizes.
    for item in items:
        at = min(item.event_time_s, clock_s)
        newest = partials.setdefault(watermark_id(item.stream), {"kind": "watermark", "origins": {}})["origins"]
        newest[item.origin] = max(newest.get(item.origin, at), at)
        for size_s in spec.sizes_s:
            start = window_start(item.event_time_s, size_s)
            kid = key_id(size_s, start, item.stream, item.dimensions)
            if is_new(kid, item):
                if kid not in partials:
                    partials[kid] = _empty_key(size_s, start, item.stream, item.dimensions)
                _add_to_key(spec, partials[kid], item)
                if not item.is_alert:
                    users.setdefault(kid, set()).add(item.entity)
            sid = stream_id(size_s, start, item.stream)
            if size_s == spec.rate_size_s and is_new(sid, item):
                if sid not in partials:
                    partials[sid] = _empty_stream(size_s, start, item.stream)
                _add_to_stream(partials[sid], item)
    for kid, seen in users.items():
        partials[kid]["normal"]["users"] = _users_sketch(seen)
    return partials


def _add_to_key(spec: WindowSpec, key: dict[str, Any], item: ScoredItem) -> None:
    _applied(key, item)
    if item.is_alert:
        alerts = key["alerts"]
        alerts["count"] += 1
        _add_counts(alerts["by_detector"], dict.fromkeys(item.fired, 1))
        _add_counts(alerts["severity"], {item.severity: 1})
        _add_counts(alerts["entities"], {item.entity: 1})
        return
    normal = key["normal"]
    normal["count"] += 1
    normal["measure_sum"] += item.measure
    for name, score in item.scores.items():
        histogram = normal["histograms"].setdefault(name, [0] * (len(spec.score_bin_edges) + 1))
        histogram[int(np.searchsorted(spec.score_bin_edges, score, side="right"))] += 1


def _add_to_stream(window: dict[str, Any], item: ScoredItem) -> None:
    _applied(window, item)
    window["scored"] += 1
    if item.is_alert:
        window["alerts"] += 1
        _add_counts(window["by_detector"], dict.fromkeys(item.fired, 1))
        _add_counts(window["entities"], {item.entity: 1})


def _merge_applied(into: dict[str, Any], partial: dict[str, Any]) -> None:
    for source, offset in partial["applied"].items():
        into["applied"][source] = max(into["applied"].get(source, -1), offset)


def _merge_key(into: dict[str, Any], partial: dict[str, Any]) -> None:
    _merge_applied(into, partial)
    normal, more = into["normal"], partial["normal"]
    normal["count"] += more["count"]
    normal["measure_sum"] += more["measure_sum"]
    if more["users"]:
        normal["users"] = _merge_sketches(normal["users"], more["users"])
    for name, histogram in more["histograms"].items():
        held = normal["histograms"].setdefault(name, [0] * len(histogram))
        normal["histograms"][name] = [a + b for a, b in zip(held, histogram, strict=True)]
    alerts, more = into["alerts"], partial["alerts"]
    alerts["count"] += more["count"]
    for name in ("by_detector", "severity", "entities"):
        _add_counts(alerts[name], more[name])
    _keep_tracked(alerts["entities"])


def _merge_stream(spec: WindowSpec, into: dict[str, Any], partial: dict[str, Any]) -> list[dict[str, Any]]:
    """Add a stream partial; return an escalation for each entity this takes past the per-window limit."""
    for name in ("scored", "alerts"):
        into[name] += partial[name]
    _merge_applied(into, partial)
    _add_counts(into["by_detector"], partial["by_detector"])
    _add_counts(into["entities"], partial["entities"])
    escalations = []
    for entity in sorted(partial["entities"]):
        count = into["entities"][entity]
        if (
            count > spec.entity_max_alerts
            and len(into["escalated"]) < TRACKED_ENTITIES
            and entity not in into["escalated"]
        ):
            into["escalated"].append(entity)
            start, size = into["start"], into["window_s"]
            escalations.append(
                {"type": "entity_escalation", "stream": into["stream"], "entity": entity, "window_s": size,
                 "window_start": iso(start), "window_end": iso(start + size), "alerts": count,
                 "limit": spec.entity_max_alerts, "raised_at": datetime.now(UTC).isoformat()}
            )  # fmt: skip
    _keep_tracked(into["entities"])
    return escalations


def merge_partials(
    spec: WindowSpec, state: MutableMapping[str, Any], partials: dict[str, dict[str, Any]], now_s: float | None = None
) -> FoldOutcome:
    """Add partial windows into the open windows of `state` (mutated); return the escalations they raise.

    A partial whose window has already closed for its stream is late: dropped, its items counted. Then each
    stream's watermark moves (`_advance_watermark`); with the wall clock's `now_s`, idle origins let go of it.
    """
    outcome = FoldOutcome()
    smallest_s = min(spec.sizes_s)
    for pid, partial in partials.items():
        if partial["kind"] == "watermark":
            continue
        stream = partial["stream"]
        watermark = state.get(watermark_id(stream))
        counted = partial["kind"] == "key" and partial["window_s"] == smallest_s
        alerts, normal = (partial["alerts"]["count"], partial["normal"]["count"]) if counted else (0, 0)
        if watermark is not None and partial["start"] + partial["window_s"] <= watermark - spec.lateness_s:
            outcome.late += alerts + normal
            continue
        outcome.alerts += alerts
        outcome.normal += normal
        if pid not in state:
            size_s, start = partial["window_s"], partial["start"]
            state[pid] = (
                _empty_key(size_s, start, stream, partial["dimensions"])
                if partial["kind"] == "key"
                else _empty_stream(size_s, start, stream)
            )
        if partial["kind"] == "key":
            _merge_key(state[pid], partial)
        else:
            outcome.escalations += _merge_stream(spec, state[pid], partial)
    for pid, partial in partials.items():  # watermarks move after the partials of the same batch landed
        if partial["kind"] == "watermark":
            _advance_watermark(spec, state, pid.split("|", 1)[1], partial["origins"], now_s)
    return outcome


def _advance_watermark(
    spec: WindowSpec, state: MutableMapping[str, Any], stream: str, newest: dict[str, float], now_s: float | None
) -> None:
    """Record each origin's newest event time, forget the origins idle for `spec.idle_origin_s`, and move the
    stream's watermark up to the least newest time of those left (never back: a closed window stays closed).

    When every known origin is idle, nothing was merged for that long: the summarizer was down or handing the
    stream over, or the stream was quiet. No origin is then known to lag, so all count as seen now; else the
    first batch's origins alone would set the watermark, and every other partition's backlog would be late."""
    seen_s = 0.0 if now_s is None else now_s  # without a clock (a file, a test), no origin ever idles
    stored = state.get(origins_id(stream), {})
    paused = bool(stored) and all(seen < seen_s - spec.idle_origin_s for _, seen in stored.values())
    origins = {origin: [at, seen_s if paused else seen] for origin, (at, seen) in stored.items()}
    for origin, at in newest.items():
        origins[origin] = [max(origins.get(origin, [at])[0], at), seen_s]
    active = {origin: entry for origin, entry in origins.items() if entry[1] >= seen_s - spec.idle_origin_s}
    state[origins_id(stream)] = active
    reached = min(at for at, _ in active.values())
    previous = state.get(watermark_id(stream))
    state[watermark_id(stream)] = reached if previous is None else max(previous, reached)


def fold_items(spec: WindowSpec, state: MutableMapping[str, Any], items: list[ScoredItem]) -> FoldOutcome:
    """Both steps at once: the items as one batch, merged into `state`."""
    return merge_partials(spec, state, partials_of(spec, items, state))


def _top(counts: dict[str, int], n: int = TOP_ENTITIES) -> list[list[Any]]:
    """The n largest counts, ties by name: the same whichever order the batches came in."""
    return [[name, count] for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def key_report(spec: WindowSpec, state: dict[str, Any]) -> dict[str, Any]:
    """The `reports.summary` record of one closed (window, stream, dimension values)."""
    normal, alerts = state["normal"], state["alerts"]
    scored = normal["count"] + alerts["count"]
    return {
        "type": "window_summary",
        "stream": state["stream"],
        "dimensions": state["dimensions"],
        "window_s": state["window_s"],
        "window_start": iso(state["start"]),
        "window_end": iso(state["start"] + state["window_s"]),
        "scored": scored,
        "anomaly_rate": alerts["count"] / scored if scored else 0.0,
        "normal": {
            "count": normal["count"],
            "measure_sum": normal["measure_sum"],
            "measure_mean": normal["measure_sum"] / normal["count"] if normal["count"] else 0.0,
            "distinct_entities": distinct_users(normal["users"]),
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


def rate_verdict(spec: WindowSpec, state: dict[str, Any], baseline: list[list[int]]) -> dict[str, Any] | None:
    """A `rate_alert` record when the stream's window passes the absolute or the relative criterion.

    `baseline` holds the last windows' [alerts, scored]; their pooled rate (all their alerts over all they
    scored) weighs each window by its size, so a near-empty one (1 alert of 2 scored) barely moves it, and the
    relative criterion also needs `rate_relative_min_alerts`: one alert in a quiet minute is no surge."""
    scored, alerts = state["scored"], state["alerts"]
    rate = alerts / scored if scored else 0.0
    usable = baseline[-spec.rate_baseline_windows :]
    pooled_scored = sum(window_scored for _, window_scored in usable)
    baseline_rate = (
        sum(window_alerts for window_alerts, _ in usable) / pooled_scored
        if len(usable) >= spec.rate_baseline_min_windows and pooled_scored
        else None
    )
    reasons = []
    if alerts >= spec.rate_min_alerts:
        reasons.append("absolute")
    if (
        baseline_rate  # neither None nor 0
        and alerts >= spec.rate_relative_min_alerts
        and rate > spec.rate_baseline_multiple * baseline_rate
    ):
        reasons.append("relative")
    if not reasons:
        return None
    start, size = state["start"], state["window_s"]
    return {"type": "rate_alert", "stream": state["stream"], "window_s": size, "window_start": iso(start),
            "window_end": iso(start + size), "alerts": alerts, "scored": scored, "rate": rate,
            "baseline": baseline_rate, "criteria": reasons, "top_entities": _top(state["entities"]),
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
    # Oldest first, so that each stream window's baseline holds only the windows before it.
    for entry in _windows_ending_by(state, stream, limit):
        window = state[entry]
        del state[entry]
        if entry.startswith("key|"):
            closed.reports.append(key_report(spec, window))
        else:
            baseline = state.get(baseline_id(stream), [])
            verdict = rate_verdict(spec, window, baseline)
            if verdict is not None:
                closed.rate_alerts.append(verdict)
            state[baseline_id(stream)] = [*baseline, [window["alerts"], window["scored"]]][
                -spec.rate_baseline_windows :
            ]
    closed.reports.sort(key=lambda r: (r["window_start"], r["window_s"], sorted(r["dimensions"].items())))
    return closed


def dimension_value(value: Any) -> str:
    """A dimension field's value as a window key: absent and null alike are '-'."""
    return "-" if value is None else str(value)


def scored_item(value: bytes, source: str = "", offset: int = -1) -> ScoredItem | None:
    """An alert or summary record as a window item; None for anything else (rate alerts, foreign records,
    records of a stream this build does not know)."""
    try:
        record = decode_output(value)
        event = msgspec.json.decode(record.event)
        fields = CATALOG[record.stream].windows
        event_time_s = msgspec.convert(event[fields.time], datetime).timestamp()  # RFC 3339 as the contracts read it
        common: dict[str, Any] = {
            "stream": record.stream,
            "event_time_s": event_time_s,
            "entity": record.entity if record.entity is not None else str(event.get(fields.entity, "")),
            "dimensions": {name: dimension_value(event.get(name)) for name in fields.dimensions},
            "measure": float(event.get(fields.measure, 0.0)) if fields.measure else 0.0,
            "source": source,
            "offset": offset,
            "origin": f"{record.source.topic}:{record.source.partition}",
        }
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if isinstance(record, AlertRecord):
        scores = {d.name: d.score for d in record.detectors}
        return ScoredItem(is_alert=True, scores=scores, fired=tuple(record.fired), severity=record.severity, **common)
    return ScoredItem(is_alert=False, scores=dict(record.scores), **common)
