"""Score a loaded version on a labelled events file, for `fleetwatch models compare --on FILE`."""

from __future__ import annotations

from pathlib import Path

from shared.errors import FleetwatchError
from shared.evaluation import FleetEvaluation, earlier_event_counts, evaluate_fleet
from shared.event_files import label_arrays, read_labels, read_payloads
from shared.model_version import DeployedVersion


def evaluate_version_on_file(version: DeployedVersion, events_path: Path, labels_path: Path) -> FleetEvaluation:
    """Features over the file's whole history (time order), scored by the version, against the labels (and, per
    anomaly kind, the fleet's recall)."""
    offline = version.stream.offline(read_payloads(events_path, version.stream.table_payloads))
    labels = read_labels(labels_path)
    event_ids = offline.columns.event_id.tolist()
    if not event_ids or any(event_id not in labels for event_id in event_ids):
        raise FleetwatchError(f"{events_path}: no events, or events without a label in {labels_path}")
    is_anomaly, kinds = label_arrays(labels, event_ids)
    scores = version.score(version.bundle.scaler.transform(offline.raw_features))
    names = version.detector_names
    return evaluate_fleet(
        is_anomaly,
        scores={name: scores[:, j] for j, name in enumerate(names)},
        offsets=dict(zip(names, version.offsets.tolist(), strict=True)),
        shadow={e.name for e in version.manifest.detectors if e.mode == "shadow"},
        combination=version.combination,
        kinds=kinds,
        earlier_events=earlier_event_counts(offline.columns.entity, offline.columns.event_time_s),
    )
