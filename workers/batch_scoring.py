"""`fleetwatch score FILE`: the scoring core over a file, without Kafka (seed 000's batch check).

Writes every scored event to Parquet and the batch report (`shared.batch_report`): counts, the top anomalies
by severity (seed 001's "sort by anomaly score"), where anomalies concentrate (hour of day and the stream's
summary dimensions, e.g. transaction type and segment) as markdown, PNG charts and Parquet, and a batch alert
when the anomaly rate passes the configured criterion. The stream is the version's. One process holds the
whole file; `fleetwatch spark score` does the same beyond one machine's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from shared.batch_report import BatchSummary, scored_table, write_batch_report
from shared.errors import FleetwatchError
from shared.event_files import read_payloads
from shared.model_version import DeployedVersion


@dataclass(frozen=True)
class BatchReport:
    events: int
    malformed: int
    alerts: int
    anomaly_rate: float
    batch_alert: bool
    scored_path: Path
    report_path: Path


def score_file(
    version: DeployedVersion, input_path: Path, out_dir: Path, alert_rate_criterion: float, top_n: int = 20
) -> BatchReport:
    stream = version.stream
    payloads = read_payloads(input_path, stream.table_payloads)
    offline = stream.offline(payloads)
    if not len(offline.columns):
        raise FleetwatchError(f"{input_path}: no valid events ({len(offline.errors)} malformed)")
    table = scored_table(version, stream, offline.columns, offline.raw_features)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored_path = out_dir / "scored.parquet"
    pq.write_table(table, scored_path)
    summary = BatchSummary.of_table(
        table, input_path.name, len(payloads), alert_rate_criterion, stream.windows.dimensions, top_n
    )
    files = write_batch_report(summary, stream.alert_fields, out_dir)
    return BatchReport(
        summary.events, summary.malformed, summary.alerts, summary.anomaly_rate, summary.batch_alert, scored_path,
        files.report,
    )  # fmt: skip
