"""Score a loaded version on a labelled events file, for `fleetwatch models compare --on FILE`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.contracts import decode_transactions
from shared.errors import FleetwatchError
from shared.evaluation import FleetEvaluation, evaluate_fleet
from shared.event_files import read_labels, read_payloads
from shared.features import TransactionColumns, advance_profiles
from shared.model_version import DeployedVersion
from shared.user_profiles import Profiles


def evaluate_version_on_file(version: DeployedVersion, events_path: Path, labels_path: Path) -> FleetEvaluation:
    """Features over the file's whole history (time order), scored by the version, against the labels."""
    events = sorted(decode_transactions(read_payloads(events_path)).events, key=lambda e: e.timestamp)
    labels = read_labels(labels_path)
    if not events or any(e.event_id not in labels for e in events):
        raise FleetwatchError(f"{events_path}: no events, or events without a label in {labels_path}")
    raw, _ = advance_profiles(Profiles.empty(), TransactionColumns.from_events(events))
    scores = version.score(version.bundle.scaler.transform(raw))
    names = version.detector_names
    return evaluate_fleet(
        np.array([labels[e.event_id][0] for e in events]),
        scores={name: scores[:, j] for j, name in enumerate(names)},
        offsets=dict(zip(names, version.offsets.tolist(), strict=True)),
        shadow={e.name for e in version.manifest.detectors if e.mode == "shadow"},
    )
