"""A scored history as one table, and the batch report on it: batch mode and the Spark path write both alike.

`scored_table` turns a featurized history and its scores into one Arrow table: the stream's report columns,
the event time, every detector's score, the verdict, severity, the detectors that fired, how far below its
threshold the deepest alerting detector went (`alert_margin`), the version and the stream. Batch mode builds
it over a whole file; the Spark path over each partition. `BatchSummary` is what the report says about such a
table: counts, the top anomalies (most severe first, then deepest below threshold, then earliest, then by
event id: a total order, so any engine picks the same rows) and where anomalies concentrate (hour of day and
the stream's window dimensions). Batch mode computes it with numpy, the Spark path with Spark;
`write_batch_report` writes `report.md`, one PNG chart per concentration, `insights.parquet` and `top.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.model_version import DeployedVersion
from shared.pipeline import EventColumns, Stream
from shared.scoring import score_batch
from shared.summary_report import markdown_table, save_chart

HOUR = "hour of day"
"""The concentration every stream has: by the hour (UTC) of the event time."""

TOP_ORDER = [("severity_score", "descending"), ("alert_margin", "ascending"), ("timestamp", "ascending"),
             ("event_id", "ascending")]  # fmt: skip
"""How the top anomalies are ranked, as columns of the scored table."""


def scored_table(
    version: DeployedVersion, stream: Stream[Any, Any], columns: EventColumns, raw_features: np.ndarray
) -> pa.Table:
    """Every event of `columns` with its scores under `version`: the rows of batch mode's `scored.parquet`."""
    scored = score_batch(version, raw_features)
    names, alerting = version.detector_names, version.alerting_mask
    fired = [
        [n for n, flag, on in zip(names, row, alerting.tolist(), strict=True) if flag and on]
        for row in scored.flags.tolist()
    ]
    # Relative distance below each alerting detector's threshold; the deepest one ranks an alert.
    margin = ((scored.scores - version.offsets[None, :]) / np.abs(version.offsets[None, :]).clip(1e-9))[:, alerting]
    return pa.table(
        {
            "event_id": columns.event_id.tolist(),  # every stream's, and the top anomalies' last tie-breaker
            **stream.report_table(columns),
            "entity": columns.entity.tolist(),  # the key its state is kept under (a log line's session)
            "timestamp": pa.array((columns.event_time_s * 1000).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            "is_alert": scored.alert,
            "severity": scored.severity().tolist(),
            "severity_score": scored.severity_score,
            "alert_margin": margin.min(axis=1) if margin.shape[1] else np.zeros(len(columns)),
            "fired": pa.array(fired, pa.list_(pa.string())),
            **{f"score_{name}": scored.scores[:, j] for j, name in enumerate(names)},
            "model_version": np.full(len(columns), version.version),
            "stream": [stream.name] * len(columns),
        }
    )


def hours_of_day(timestamps: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.hour(timestamps).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class Concentration:
    """Events and alerts per value of one dimension, values in ascending order."""

    dimension: str
    values: list[Any]
    events: np.ndarray
    alerts: np.ndarray

    @classmethod
    def of(cls, dimension: str, values: np.ndarray, alert: np.ndarray) -> Concentration:
        keys, inverse = np.unique(values, return_inverse=True)
        events = np.bincount(inverse, minlength=len(keys))
        alerts = np.bincount(inverse, weights=alert, minlength=len(keys)).astype(np.int64)
        return cls(dimension, keys.tolist(), events, alerts)

    @classmethod
    def from_counts(cls, dimension: str, rows: Sequence[tuple[Any, int, int]]) -> Concentration:
        """From (value, events, alerts) rows in any order, e.g. a distributed group-by's."""
        ordered = sorted(rows, key=lambda row: row[0])
        return cls(
            dimension,
            [value for value, _, _ in ordered],
            np.array([events for _, events, _ in ordered], dtype=np.int64),
            np.array([alerts for _, _, alerts in ordered], dtype=np.int64),
        )

    @property
    def title(self) -> str:
        return self.dimension.replace("_", " ")

    @property
    def rates(self) -> np.ndarray:
        return self.alerts / np.maximum(self.events, 1)

    def markdown(self) -> str:
        order = np.argsort(-self.rates, kind="stable")
        rows = [
            [str(self.values[i]), f"{self.events[i]:,}", f"{self.alerts[i]:,}", f"{self.rates[i]:.2%}"] for i in order
        ]
        return f"### By {self.title}\n\n" + markdown_table([self.title, "events", "alerts", "anomaly rate"], rows)


@dataclass(frozen=True)
class BatchSummary:
    """What the report says about a scored history; `top` holds the top anomalies' rows of the scored table."""

    source: str
    stream: str
    version: int
    records: int
    events: int
    alerts: int
    alert_rate_criterion: float
    top: pa.Table
    concentrations: list[Concentration]

    @classmethod
    def of_table(
        cls, table: pa.Table, source: str, records: int, alert_rate_criterion: float, dimensions: Sequence[str],
        top_n: int,
    ) -> BatchSummary:  # fmt: skip
        """The summary of a whole scored table in memory (batch mode)."""
        alert = table.column("is_alert").to_numpy()
        top = table.filter(pc.field("is_alert")).sort_by(TOP_ORDER).slice(0, top_n)
        return cls(
            source=source,
            stream=str(table.column("stream")[0]),
            version=int(table.column("model_version")[0].as_py()),
            records=records,
            events=table.num_rows,
            alerts=int(alert.sum()),
            alert_rate_criterion=alert_rate_criterion,
            top=top,
            concentrations=[
                Concentration.of(HOUR, hours_of_day(table.column("timestamp")), alert),
                *(
                    Concentration.of(name, table.column(name).to_numpy(zero_copy_only=False), alert)
                    for name in dimensions
                ),
            ],
        )

    @property
    def malformed(self) -> int:
        return self.records - self.events

    @property
    def anomaly_rate(self) -> float:
        return self.alerts / max(self.events, 1)

    @property
    def batch_alert(self) -> bool:
        return self.anomaly_rate > self.alert_rate_criterion


@dataclass(frozen=True)
class ReportFiles:
    report: Path
    insights: Path
    top: Path
    charts: list[Path]


def write_batch_report(summary: BatchSummary, alert_fields: Sequence[str], out_dir: Path) -> ReportFiles:
    """`report.md` with its PNG charts, `insights.parquet` (every concentration) and `top.parquet` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = [
        save_chart(out_dir / f"by-{c.dimension.replace(' ', '-')}.png", f"anomaly rate by {c.title}",
                   [str(v) for v in c.values], c.rates.tolist())
        for c in summary.concentrations
    ]  # fmt: skip
    rate, criterion = summary.anomaly_rate, summary.alert_rate_criterion
    top = summary.top
    shown = [top.column(name).to_pylist() for name in alert_fields]
    hours = hours_of_day(top.column("timestamp")).tolist()
    severity, fired = top.column("severity").to_pylist(), top.column("fired").to_pylist()
    top_rows = [
        [_cell(values[i]) for values in shown] + [str(hours[i]), severity[i], ", ".join(fired[i] or ())]
        for i in range(top.num_rows)
    ]
    report = "\n\n".join(
        [
            f"# Batch scoring report: {summary.source}",
            f"Model version v{summary.version} ({summary.stream}); {summary.records:,} records: {summary.events:,} "
            f"valid, {summary.malformed:,} malformed; **{summary.alerts:,} anomalies ({rate:.2%})**.",
            (
                f"**BATCH ALERT**: the anomaly rate {rate:.2%} is above the criterion {criterion:.2%}."
                if summary.batch_alert
                else f"No batch alert: the anomaly rate {rate:.2%} is within the criterion {criterion:.2%}."
            ),
            f"## Top {top.num_rows} anomalies by severity",
            markdown_table([*alert_fields, "hour", "severity", "fired"], top_rows),
            "## Where anomalies concentrate",
            *(c.markdown() for c in summary.concentrations),
            *(f"![{chart.stem}]({chart.name})" for chart in charts),
        ]
    )
    files = ReportFiles(out_dir / "report.md", out_dir / "insights.parquet", out_dir / "top.parquet", charts)
    files.report.write_text(report + "\n")
    pq.write_table(_insights_table(summary.concentrations), files.insights)
    pq.write_table(top, files.top)
    return files


def _insights_table(concentrations: Sequence[Concentration]) -> pa.Table:
    return pa.table(
        {
            "dimension": [c.dimension for c in concentrations for _ in c.values],
            "value": [str(v) for c in concentrations for v in c.values],
            "events": np.concatenate([c.events for c in concentrations]),
            "alerts": np.concatenate([c.alerts for c in concentrations]),
            "anomaly_rate": np.concatenate([c.rates for c in concentrations]),
        }
    )


def _cell(value: object) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)
