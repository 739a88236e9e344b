"""`fleetwatch score FILE`: the scoring core over a file, without Kafka (seed 000's batch check).

Writes every scored event to Parquet and a markdown report: counts, the top anomalies by severity
(seed 001's "sort by anomaly score"), where anomalies concentrate (hour of day and the stream's summary
dimensions, e.g. transaction type and segment), and a batch alert when the anomaly rate passes the
configured criterion. The stream is the version's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.errors import FleetwatchError
from shared.event_files import read_payloads
from shared.model_version import DeployedVersion
from shared.scoring import score_batch
from shared.streams.catalog import stream_named


@dataclass(frozen=True)
class BatchReport:
    events: int
    malformed: int
    alerts: int
    anomaly_rate: float
    batch_alert: bool
    scored_path: Path
    report_path: Path


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _concentration(values: np.ndarray, alert: np.ndarray, title: str) -> str:
    keys, inverse = np.unique(values, return_inverse=True)
    totals = np.bincount(inverse, minlength=len(keys))
    alerts = np.bincount(inverse, weights=alert, minlength=len(keys)).astype(int)
    order = np.argsort(-alerts / np.maximum(totals, 1))
    rows = [[str(keys[i]), f"{totals[i]:,}", f"{alerts[i]:,}", f"{alerts[i] / max(totals[i], 1):.2%}"] for i in order]
    return f"### By {title}\n\n" + _markdown_table([title, "events", "alerts", "anomaly rate"], rows)


def _cell(value: object) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def score_file(
    version: DeployedVersion, input_path: Path, out_dir: Path, alert_rate_criterion: float, top_n: int = 20
) -> BatchReport:
    stream = stream_named(version.manifest.stream)
    payloads = read_payloads(input_path)
    offline = stream.offline(payloads)
    columns, raw = offline.columns, offline.raw_features
    if not len(columns):
        raise FleetwatchError(f"{input_path}: no valid events ({len(offline.errors)} malformed)")
    scored = score_batch(version, raw)
    names = version.detector_names
    alerting = version.alerting_mask
    fired = [
        [n for n, flag, on in zip(names, row, alerting.tolist(), strict=True) if flag and on]
        for row in scored.flags.tolist()
    ]
    hours = ((columns.event_time_s % 86400) // 3600).astype(int)
    severity = scored.severity().tolist()
    event_table = stream.report_table(columns)
    table = pa.table(
        {
            **event_table,
            "timestamp": pa.array((columns.event_time_s * 1000).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            "is_alert": scored.alert,
            "severity": severity,
            "severity_score": scored.severity_score,
            "fired": fired,
            **{f"score_{name}": scored.scores[:, j] for j, name in enumerate(names)},
            "model_version": np.full(len(columns), version.version),
            "stream": [stream.name] * len(columns),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    scored_path, report_path = out_dir / "scored.parquet", out_dir / "report.md"
    pq.write_table(table, scored_path)

    alert = scored.alert
    rate = float(alert.mean())
    # Most severe first; within a severity, the deepest below-threshold margin among alerting detectors.
    margin = ((scored.scores - version.offsets[None, :]) / np.abs(version.offsets[None, :]).clip(1e-9))[:, alerting]
    order = np.lexsort((margin.min(axis=1), -scored.severity_score))
    top = order[alert[order]][:top_n].tolist()
    shown = [event_table[field] for field in stream.alert_fields]
    top_rows = [[_cell(values[i]) for values in shown] + [str(hours[i]), severity[i], ", ".join(fired[i])] for i in top]
    batch_alert = rate > alert_rate_criterion
    report = "\n\n".join(
        [
            f"# Batch scoring report: {input_path.name}",
            f"Model version v{version.version} ({stream.name}); {len(payloads):,} records: {len(columns):,} valid, "
            f"{len(offline.errors):,} malformed; **{int(alert.sum()):,} anomalies ({rate:.2%})**.",
            (
                f"**BATCH ALERT**: the anomaly rate {rate:.2%} is above the criterion {alert_rate_criterion:.2%}."
                if batch_alert
                else f"No batch alert: the anomaly rate {rate:.2%} is within the criterion {alert_rate_criterion:.2%}."
            ),
            f"## Top {len(top)} anomalies by severity",
            _markdown_table([*stream.alert_fields, "hour", "severity", "fired"], top_rows),
            "## Where anomalies concentrate",
            _concentration(hours, alert, "hour of day"),
            *(
                _concentration(np.asarray(event_table[name], dtype=object), alert, name.replace("_", " "))
                for name in stream.windows.dimensions
            ),
        ]
    )
    report_path.write_text(report + "\n")
    return BatchReport(len(columns), len(offline.errors), int(alert.sum()), rate, batch_alert, scored_path, report_path)
