"""The window core without Kafka: figures, closing, the rate criterion, entity escalation, the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from shared.summary_report import write_report
from shared.windows import ScoredItem, WindowSpec, close_windows, fold_items, merge_partials, partials_of

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
