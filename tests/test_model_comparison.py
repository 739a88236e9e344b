"""`fleetwatch models compare --on FILE`: a version re-evaluated on a labelled events file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.evaluation import render_comparison
from shared.event_files import labels_path_for
from shared.model_version import DeployedVersion
from shared.streams.transactions.files import write_labels, write_transactions
from shared.streams.transactions.synthetic import ANOMALY_KINDS, GeneratorSpec, generate_transactions
from tests.small_models import train_small
from workers.model_comparison import evaluate_version_on_file


def test_a_version_on_a_labelled_file_is_evaluated_with_its_recall_per_kind(tmp_path: Path) -> None:
    result = train_small(events=5_000, seed=8)
    version = DeployedVersion.assemble(result.draft, result.bundle)
    data = generate_transactions(GeneratorSpec(users=300, events=3_000, anomaly_rate=0.03, seed=9))
    events = tmp_path / "labelled.jsonl"
    write_transactions(data, events)
    write_labels(data, labels_path_for(events))

    evaluation = evaluate_version_on_file(version, events, labels_path_for(events))
    assert evaluation.fleet.true_positives + evaluation.fleet.false_negatives == int(data.is_anomaly.sum())
    assert set(evaluation.by_kind) == {*ANOMALY_KINDS, "all kinds"}
    assert evaluation.by_kind["all kinds"].caught == evaluation.fleet.true_positives
    # Users whose anomaly came before their third transaction are counted apart.
    kinds = evaluation.by_kind.values()
    assert all(0 <= k.caught_with_history <= k.with_history <= k.anomalies for k in kinds)
    assert np.any([k.with_history < k.anomalies for k in kinds])
    assert "| new_ip_country |" in render_comparison(evaluation, evaluation)
