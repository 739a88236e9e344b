"""The window core without Kafka: figures, closing, the rate criterion, entity escalation, the report."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.output_records import AlertRecord, DetectorVerdict, Source
from shared.summary_report import reports_from_scored_parquet, write_report
from shared.windows import (
    TRACKED_ENTITIES,
    ScoredItem,
    WindowSpec,
    close_windows,
    fold_items,
    iso,
    merge_partials,
    partials_of,
    scored_item,
)

T0 = 1_780_000_020
SPEC = WindowSpec(sizes_s=(60,), lateness_s=0, rate_min_alerts=10, entity_max_alerts=3)


def item(user: str, at_s: float, alert: bool = False, amount: float = 10.0) -> ScoredItem:
    fired = ("iforest",) if alert else ()
    return ScoredItem(
        "transactions", alert, at_s, user, {"segment": "tight-passive", "transaction_type": "purchase"}, amount,
        {"iforest": 0.3}, fired, "high",
    )  # fmt: skip


def run(items: list[ScoredItem]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    state: dict[str, Any] = {}
    outcome = fold_items(SPEC, state, items)
    closed = close_windows(SPEC, state, "transactions")
    return closed.reports, closed.rate_alerts, outcome.escalations


def test_closed_window_counts_and_sums_equal_a_direct_computation() -> None:
    normals = [item(f"u{i % 4}", T0 + i, amount=10.0 + i) for i in range(30)]
    reports, _, _ = run([*normals, item("u9", T0 + 5, alert=True), item("late-closer", T0 + 600)])
    (figures,) = reports
    assert figures["normal"]["count"] == 30
    assert figures["normal"]["measure_sum"] == pytest.approx(sum(10.0 + i for i in range(30)))
    assert figures["normal"]["distinct_entities"] == 4
    assert figures["alerts"]["by_detector"] == {"iforest": 1}
    assert figures["anomaly_rate"] == pytest.approx(1 / 31)


def test_rate_criterion_raises_once_at_the_limit_and_not_just_below() -> None:
    at_limit = [item(f"a{i}", T0 + i, alert=True) for i in range(10)] + [item("c", T0 + 600)]
    below = [item(f"a{i}", T0 + i, alert=True) for i in range(9)] + [item("c", T0 + 600)]
    assert [r["alerts"] for r in run(at_limit)[1]] == [10]
    assert run(below)[1] == []


def test_rate_above_a_multiple_of_the_baseline_raises_a_relative_alert() -> None:
    quiet = [item(f"n{w}-{i}", T0 + 60 * w + i, alert=i == 0) for w in range(3) for i in range(20)]
    burst = [item(f"b{i}", T0 + 180 + i, alert=i < 5) for i in range(20)]
    rate_alerts = run(quiet + burst + [item("c", T0 + 600)])[1]
    assert [(r["criteria"], r["baseline"]) for r in rate_alerts] == [(["relative"], pytest.approx(0.05))]


def test_a_near_empty_window_neither_raises_a_relative_alert_nor_hides_the_surge_after_it() -> None:
    quiet = [item(f"n{w}-{i}", T0 + 60 * w + i % 60, alert=i == 0) for w in range(3) for i in range(100)]
    lull = [item("night-owl", T0 + 180, alert=True), item("night-cat", T0 + 181)]  # 1 alert of 2 scored
    surge = [item(f"s{i}", T0 + 240 + i % 60, alert=i < 8) for i in range(100)]  # 8 % against 1 %
    rate_alerts = run(quiet + lull + surge + [item("c", T0 + 600)])[1]
    assert [(r["window_start"], r["criteria"]) for r in rate_alerts] == [(iso(T0 + 240), ["relative"])]
    assert rate_alerts[0]["baseline"] == pytest.approx(4 / 302), "pooled: the lull's 1 of 2 weighs as 2 records"


def test_entity_burst_escalates_once() -> None:
    burst = [item("mallory", T0 + i, alert=True) for i in range(6)]
    escalations = run(burst)[2]
    assert [(e["entity"], e["alerts"]) for e in escalations] == [("mallory", 6)]  # alerts when escalated


def test_late_items_are_dropped_and_counted() -> None:
    state: dict[str, Any] = {}
    fold_items(SPEC, state, [item("a", T0), item("c", T0 + 600)])
    close_windows(SPEC, state, "transactions")
    assert fold_items(SPEC, state, [item("b", T0 + 1)]).late == 1


def test_report_writes_markdown_and_charts_with_the_figures(tmp_path: Path) -> None:
    reports = run([item(f"u{i}", T0 + i, alert=i < 3) for i in range(12)] + [item("c", T0 + 600)])[0]
    path = write_report(reports, tmp_path / "out")
    text = path.read_text()
    assert "12 scored, 3 alerts (25.00%)" in text
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert len(pngs) == 6 and all((path.parent / p).stat().st_size > 1000 for p in pngs)
    assert all(f"]({p})" in text for p in pngs)


def test_a_fold_counts_each_record_once_and_a_record_late_for_the_smallest_window_only_as_late() -> None:
    spec = WindowSpec(sizes_s=(60, 3600), lateness_s=0)
    state: dict[str, Any] = {}
    on_time = fold_items(spec, state, [item("a", T0 + 1), item("b", T0 + 2, alert=True), item("c", T0 + 600)])
    assert (on_time.normal, on_time.alerts, on_time.late) == (2, 1, 0), "one count per record, not per window size"
    close_windows(spec, state, "transactions")
    late = fold_items(spec, state, [item("d", T0 + 3)])  # its minute closed; its hour is open
    assert (late.normal, late.alerts, late.late) == (0, 0, 1)


def test_batches_merged_as_partials_equal_one_fold_and_escalate_once() -> None:
    items = [item(f"u{i % 9}", T0 + i, alert=i % 4 == 0, amount=float(i)) for i in range(48)]
    items += [item("mallory", T0 + 50 + i, alert=True) for i in range(4)]
    whole: dict[str, Any] = {}
    whole_escalations = fold_items(SPEC, whole, items).escalations
    batched: dict[str, Any] = {}
    batched_escalations = []
    for start in range(0, len(items), 5):  # mallory's 4 alerts straddle two batches
        batched_escalations += merge_partials(SPEC, batched, partials_of(SPEC, items[start : start + 5])).escalations
    assert [e["entity"] for e in batched_escalations] == [e["entity"] for e in whole_escalations] == ["mallory"]
    at_end = T0 + 600
    closed = [close_windows(SPEC, state, "transactions", at_end) for state in (batched, whole)]
    assert closed[0].reports == closed[1].reports
    assert [without_time(r) for r in closed[0].rate_alerts] == [without_time(r) for r in closed[1].rate_alerts]
    (report,) = close_windows(SPEC, fold_and_return(items), "transactions", at_end).reports
    assert report["normal"]["distinct_entities"] == len({i.entity for i in items if not i.is_alert})


def without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "raised_at"}


def fold_and_return(items: list[ScoredItem]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    fold_items(SPEC, state, items)
    return state


def test_items_read_again_after_a_restart_count_once() -> None:
    items = [
        dataclasses.replace(item(f"u{i}", T0 + i, alert=i < 3, amount=float(i)), source="summary:0", offset=i)
        for i in range(20)
    ]
    once: dict[str, Any] = {}
    fold_items(SPEC, once, items)
    replayed: dict[str, Any] = {}
    fold_items(SPEC, replayed, items[:12])
    fold_items(SPEC, replayed, items[5:])  # the restart re-read from offset 5: 5..11 are replays
    closed = [close_windows(SPEC, state, "transactions", T0 + 600) for state in (once, replayed)]
    assert closed[0].reports == closed[1].reports
    assert closed[1].reports[0]["scored"] == 20


def test_an_event_dated_years_ahead_does_not_close_the_open_windows() -> None:
    state: dict[str, Any] = {}
    now_s = T0 + 30  # the present: the minute from T0 is open
    merge_partials(SPEC, state, partials_of(SPEC, [item("a", T0), item("wrong-clock", 4_070_000_000)], state, now_s))
    assert close_windows(SPEC, state, "transactions").reports == [], "the watermark stopped near the wall clock"
    outcome = merge_partials(SPEC, state, partials_of(SPEC, [item("b", T0 + 1)], state, now_s))
    assert outcome.late == 0
    later = T0 + 900  # real time passes: the open minute closes with both of its items, the future one waits
    merge_partials(SPEC, state, partials_of(SPEC, [item("c", later)], state, later))
    reports = close_windows(SPEC, state, "transactions").reports
    assert [(r["window_start"][:16], r["normal"]["count"]) for r in reports] == [("2026-05-28T20:27", 2)]
    assert any(key.startswith(f"key|60|{4_070_000_000 // 60 * 60}|") for key in state), "the wrong clock's item is kept"


def from_partition(partition: int, user: str, at_s: float) -> ScoredItem:
    return dataclasses.replace(item(user, at_s), origin=f"transactions:{partition}")


def test_a_lagging_input_partition_keeps_the_windows_it_still_fills_open_until_it_idles() -> None:
    """A worker's failover: partition 1 stops while partition 0 runs on; its successor resumes 20 s later."""
    spec = WindowSpec(sizes_s=(60,), lateness_s=5, idle_origin_s=60)
    state: dict[str, Any] = {}

    def fold(items: list[ScoredItem], now_s: float) -> int:
        return merge_partials(spec, state, partials_of(spec, items, state, now_s), now_s).late

    fold([from_partition(0, "a", T0 + 10), from_partition(1, "b", T0 + 55)], now_s=T0 + 56)
    fold([from_partition(0, "a", T0 + 61 + i) for i in range(20)], now_s=T0 + 81)  # partition 1 is silent
    assert close_windows(spec, state, "transactions").reports == [], "partition 1 holds the first minute open"
    assert fold([from_partition(1, "b", T0 + 56), from_partition(1, "b", T0 + 71)], now_s=T0 + 100) == 0
    (report,) = close_windows(spec, state, "transactions").reports
    assert report["normal"]["count"] == 3, "the successor's record counted in its window, not as late"

    # Partition 1 goes silent for good: past the idle time it no longer holds the stream's event time back.
    fold([from_partition(0, "a", T0 + 130)], now_s=T0 + 131)
    assert close_windows(spec, state, "transactions").reports == []
    fold([from_partition(0, "a", T0 + 165)], now_s=T0 + 166)
    assert [r["normal"]["count"] for r in close_windows(spec, state, "transactions").reports] == [21]
    # Revived with old events, it cannot reopen what closed: they are late, and the watermark stays.
    assert fold([from_partition(1, "b", T0 + 100)], now_s=T0 + 170) == 1
    assert state["watermark|transactions"] == T0 + 165

    # The summarizer stops for ten minutes, and resumes with partition 0's records first: partition 1's backlog,
    # behind them in event time, still counts in its windows (every origin was idle: none is known to lag).
    assert fold([from_partition(0, "a", T0 + 260)], now_s=T0 + 800) == 0
    assert close_windows(spec, state, "transactions").reports == [], "partition 1 holds the watermark"
    assert fold([from_partition(1, "b", T0 + 210), from_partition(1, "b", T0 + 250)], now_s=T0 + 801) == 0
    assert [r["normal"]["count"] for r in close_windows(spec, state, "transactions").reports] == [2, 1]


def log_alert(line: dict[str, Any], entity: str | None) -> bytes:
    verdict = DetectorVerdict("pca", -3.0, -1.0, -1, "alerting")
    event = msgspec.Raw(msgspec.json.encode(line))
    return msgspec.json.encode(
        AlertRecord("logs", 1, "high", 1.0, ["pca"], [verdict], [], Source("in", 0, 7), "now", event, entity=entity)
    )


def test_a_log_alert_is_windowed_by_the_workers_session_and_reads_its_fields_as_the_contract_does() -> None:
    """A line's session is the worker's (its id, a block id in its text, or its host's window), not the raw
    `session_id`, which most lines lack: keyed by that, every alert counted toward one entity 'None'."""
    line = {"event_id": "e1", "timestamp": "2026-11-30t12:00:00z", "source_host": "dn-1", "component": None,
            "message": "Deleting block blk_7", "session_id": None}  # fmt: skip
    windowed = scored_item(log_alert(line, "blk_7"))
    assert windowed is not None and windowed.entity == "blk_7"
    assert windowed.event_time_s == datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()  # RFC 3339's lowercase t, z
    assert windowed.dimensions == {"source_host": "dn-1", "component": "-"}
    assert windowed.origin == "in:0", "the watermark's unit: the input partition the worker read the line from"
    del line["component"]
    absent = scored_item(log_alert(line, "blk_7"))
    assert absent is not None and absent.dimensions == windowed.dimensions, "null and absent are one window key"


def test_an_alert_storm_over_many_entities_keeps_a_windows_state_bounded_and_its_heavy_hitter_exact() -> None:
    storm = [item(f"bot{i}", T0 + (i % 50), alert=True) for i in range(5 * TRACKED_ENTITIES)]
    storm[::100] = [item("mallory", T0 + i % 50, alert=True) for i in range(len(storm[::100]))]
    state: dict[str, Any] = {}
    escalations = []
    for start in range(0, len(storm), 500):
        escalations += merge_partials(SPEC, state, partials_of(SPEC, storm[start : start + 500], state)).escalations
    tracked = [window["alerts"]["entities"] if "alerts" in window and isinstance(window["alerts"], dict)
               else window.get("entities", {}) for window in state.values() if isinstance(window, dict)]  # fmt: skip
    assert 0 < max(len(counts) for counts in tracked) <= 2 * TRACKED_ENTITIES  # 5,000 alerting entities came
    assert max(len(msgspec.msgpack.encode(window)) for window in state.values()) < 40_000  # 44 kB, kept whole
    assert [e["entity"] for e in escalations] == ["mallory"]
    (report,) = close_windows(SPEC, state, "transactions", up_to_s=float("inf")).reports
    assert report["alerts"]["top_entities"][0] == ["mallory", 50] and report["alerts"]["count"] == len(storm)


def test_a_scored_file_from_before_records_named_their_entity_reports_by_its_entity_field(tmp_path: Path) -> None:
    rows = {
        "stream": ["transactions"] * 3,
        "timestamp": pa.array([(T0 + i) * 1000 for i in range(3)], pa.timestamp("ms", tz="UTC")),
        "user_id": ["u1", "u1", "u2"],
        "segment": ["tight-passive", None, "tight-passive"],
        "transaction_type": ["purchase"] * 3,
        "amount": [10.0, 20.0, 30.0],
        "is_alert": [True, True, False],
        "fired": [["iforest"], ["iforest"], []],
        "severity": ["high", "high", "low"],
        "score_iforest": [-0.9, -0.8, 0.2],
    }
    pq.write_table(pa.table(rows), tmp_path / "old.parquet")  # no `entity` column: written before 2026-12-02
    pq.write_table(pa.table({**rows, "entity": ["k1", "k1", "k2"]}), tmp_path / "new.parquet")
    spec = WindowSpec(sizes_s=(60,), lateness_s=0)
    old = reports_from_scored_parquet(tmp_path / "old.parquet", spec)
    new = reports_from_scored_parquet(tmp_path / "new.parquet", spec)
    assert [r["alerts"]["top_entities"] for r in old] == [[["u1", 1]], [["u1", 1]]]
    assert [r["alerts"]["top_entities"] for r in new] == [[["k1", 1]], [["k1", 1]]]
    assert sorted(r["dimensions"]["segment"] for r in new) == ["-", "tight-passive"], "null is '-' as in a stream"
