"""Batch mode: the same scoring core over a file, with a Parquet of every event and a markdown report."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from shared.model_version import DeployedVersion
from shared.streams.transactions.files import write_transactions
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from tests.small_models import train_small
from workers.batch_scoring import score_file


@pytest.fixture(scope="module")
def version() -> DeployedVersion:
    result = train_small(events=5_000, seed=8)
    return DeployedVersion.assemble(msgspec.structs.replace(result.draft, version=7), result.bundle)


def test_batch_scoring_writes_every_event_and_a_report(version: DeployedVersion, tmp_path: Path) -> None:
    data = generate_transactions(GeneratorSpec(users=300, events=3_000, anomaly_rate=0.03, seed=9))
    events = tmp_path / "batch.jsonl"
    write_transactions(data, events)
    with events.open("ab") as file:
        file.write(b"not json\n")
    report = score_file(version, events, tmp_path / "out", alert_rate_criterion=0.5, top_n=5)

    table = pq.read_table(report.scored_path).to_pydict()
    assert len(table["event_id"]) == 3_000 and report.malformed == 1
    assert set(table["model_version"]) == {7}
    assert sum(table["is_alert"]) == report.alerts > 0
    assert all(bool(fired) == alert for fired, alert in zip(table["fired"], table["is_alert"], strict=True))
    # The version alerts by its combined score: the stored per-detector scores give the same alerts.
    assert version.combination is not None
    member_scores = np.column_stack([table[f"score_{name}"] for name in version.combination.names])
    combined = version.combination.score_samples(member_scores) < version.combination.offset
    assert combined.tolist() == table["is_alert"]

    text = report.report_path.read_text()
    assert f"**{report.alerts:,} anomalies" in text and "No batch alert" in text
    assert "## Top 5 anomalies by severity" in text
    for heading in ("### By hour of day", "### By transaction type", "### By segment"):
        assert heading in text
    top_section = text.split("## Top 5")[1].split("##")[0]
    top_ids = [line.split("|")[1].strip() for line in top_section.splitlines() if line.startswith("| tx")]
    assert len(top_ids) == 5
    assert set(top_ids) <= {e for e, a in zip(table["event_id"], table["is_alert"], strict=True) if a}


def test_batch_alert_when_the_rate_passes_the_criterion(version: DeployedVersion, tmp_path: Path) -> None:
    data = generate_transactions(GeneratorSpec(users=100, events=1_000, anomaly_rate=0.3, seed=10))
    events = tmp_path / "hot.parquet"
    write_transactions(data, events)
    report = score_file(version, events, tmp_path / "out", alert_rate_criterion=0.01)
    assert report.batch_alert and "**BATCH ALERT**" in report.report_path.read_text()
