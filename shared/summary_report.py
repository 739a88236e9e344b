"""`fleetwatch report`: the latest window reports as markdown with PNG charts.

Window reports come from the summarizer's `reports.summary` topic or are computed here from a scored
Parquet of `fleetwatch score` with the same window code (`shared.windows`), so both read alike.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import msgspec
import pyarrow.parquet as pq

from shared.kafka_client import KafkaConnection, read_all
from shared.streams.catalog import stream_named
from shared.windows import ScoredItem, WindowSpec, close_windows, dimension_value, fold_items


def reports_from_scored_parquet(path: Path, spec: WindowSpec) -> list[dict[str, Any]]:
    """Every window of a scored Parquet, closed at the end of the file (no lateness: the file is complete)."""
    table = pq.read_table(path).to_pylist()
    if not table:
        return []
    stream = table[0]["stream"]
    fields = stream_named(stream).windows
    score_columns = [c for c in table[0] if c.startswith("score_")]
    items = [
        ScoredItem(
            stream=stream,
            is_alert=bool(row["is_alert"]),
            event_time_s=row["timestamp"].timestamp(),
            entity=str(row["entity"] if "entity" in row else row[fields.entity]),  # no `entity` before 2026-12-02
            dimensions={name: dimension_value(row[name]) for name in fields.dimensions},
            measure=float(row[fields.measure]) if fields.measure else 0.0,
            scores={c.removeprefix("score_"): float(row[c]) for c in score_columns},
            fired=tuple(row["fired"] or ()),
            severity=row["severity"],
        )
        for row in table
    ]
    state: dict[str, Any] = {}
    fold_items(spec, state, items)
    return close_windows(spec, state, stream, up_to_s=float("inf")).reports


def reports_from_topic(connection: KafkaConnection, topic: str) -> list[dict[str, Any]]:
    """Every committed window report on the summarizer's reports topic (other record types are skipped)."""
    records = (msgspec.json.decode(message.value()) for message in read_all(connection, topic, max_wait_s=30.0))
    return [record for record in records if record.get("type") == "window_summary"]


def save_chart(path: Path, title: str, labels: list[str], values: list[float], kind: str = "bar") -> Path:
    figure, axes = plt.subplots(figsize=(8, 4))
    if kind == "line":
        axes.plot(labels, values, marker="o")
    else:
        axes.bar(labels, values)
    axes.set_title(title)
    axes.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(records: list[dict[str, Any]], out_dir: Path, window_s: int | None = None, top_n: int = 10) -> Path:
    """Write report.md and its charts into `out_dir`; return the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    size = window_s if window_s is not None else min(r["window_s"] for r in records)
    chosen = [r for r in records if r["window_s"] == size and r.get("type") == "window_summary"]
    sections = [f"# fleetwatch window report ({size}s windows, {len(chosen)} window reports)"]
    for stream in sorted({r["stream"] for r in chosen}):
        rows = [r for r in chosen if r["stream"] == stream]
        by_window: dict[str, list[int]] = {}
        for r in rows:
            totals = by_window.setdefault(r["window_start"], [0, 0])
            totals[0] += r["alerts"]["count"]
            totals[1] += r["scored"]
        starts = sorted(by_window)
        rates = [by_window[s][0] / by_window[s][1] if by_window[s][1] else 0.0 for s in starts]
        detectors: Counter[str] = Counter()
        hours: Counter[str] = Counter()
        by_dimension: dict[str, Counter[str]] = {}
        entities: Counter[str] = Counter()
        for r in rows:
            detectors.update(r["alerts"]["by_detector"])
            hours[f"{datetime.fromisoformat(r['window_start']).hour:02d}"] += r["alerts"]["count"]
            for name, value in r["dimensions"].items():
                by_dimension.setdefault(name, Counter())[value] += r["alerts"]["count"]
            entities.update(dict((name, count) for name, count in r["alerts"]["top_entities"]))
        charts = [
            save_chart(out_dir / f"{stream}-anomaly-rate.png", f"{stream}: anomaly rate per window",
                   [s[11:16] for s in starts], rates, kind="line"),
            save_chart(out_dir / f"{stream}-by-detector.png", "alerts by detector",
                   list(detectors), list(detectors.values())),
            save_chart(out_dir / f"{stream}-by-hour.png", "alerts by hour of day",
                   sorted(hours), [hours[h] for h in sorted(hours)]),
            *(save_chart(out_dir / f"{stream}-by-{name}.png", f"alerts by {name.replace('_', ' ')}",
                     list(counts), list(counts.values())) for name, counts in sorted(by_dimension.items())),
            save_chart(out_dir / f"{stream}-top-entities.png", f"top {top_n} entities by alerts",
                   [n for n, _ in entities.most_common(top_n)], [c for _, c in entities.most_common(top_n)]),
        ]  # fmt: skip
        alerts_total = sum(v[0] for v in by_window.values())
        scored_total = sum(v[1] for v in by_window.values())
        latest = starts[-1]
        sections += [
            f"## {stream}",
            f"{len(starts)} windows, {scored_total:,} scored, {alerts_total:,} alerts "
            f"({alerts_total / max(scored_total, 1):.2%}); latest window starts {latest}.",
            markdown_table(["window start", "scored", "alerts", "anomaly rate"],
                   [[s, f"{by_window[s][1]:,}", f"{by_window[s][0]:,}", f"{rate:.2%}"]
                    for s, rate in zip(starts, rates, strict=True)]),
            "### Top entities",
            markdown_table(["entity", "alerts"], [[n, str(c)] for n, c in entities.most_common(top_n)]),
            *[f"![{chart.stem}]({chart.name})" for chart in charts],
        ]  # fmt: skip
    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
