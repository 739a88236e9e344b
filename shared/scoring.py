"""Scoring a batch against every detector of one deployed version: pure, vectorized, Kafka-free.

An event alerts when any alerting (non-shadow) detector scores it below its active threshold, or, for a
version with a combination (`shared.detectors.combination`), when the combined score is below its offset. Its
severity is the share of alerting detectors that fired (low / medium / high), and its report names
the features that stood out most: the largest |z| against the training distribution, which is what
the fitted scaler's standardised values are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.metrics import DETECTOR_SECONDS
from shared.model_version import DeployedVersion

SEVERITY_LEVELS = ("low", "medium", "high")


@dataclass(frozen=True)
class ScoredBatch:
    scores: np.ndarray  # (n, k) score_samples, higher = more normal
    flags: np.ndarray  # (n, k) score < active threshold
    alert: np.ndarray  # (n,) any alerting detector flagged, or the combined score is below its offset
    severity_score: np.ndarray  # (n,) share of alerting detectors that flagged
    top_features: np.ndarray  # (n, top) indices into the version's feature names, by |z| descending
    top_z: np.ndarray  # (n, top) the z values of those features

    def severity(self) -> np.ndarray:
        """low below 1/3 of the alerting detectors, high from 2/3, medium between."""
        return np.asarray(SEVERITY_LEVELS, dtype=object)[np.digitize(self.severity_score, [1 / 3 + 1e-9, 2 / 3 - 1e-9])]


def score_batch(version: DeployedVersion, raw_features: np.ndarray, top: int = 3) -> ScoredBatch:
    stream = version.manifest.stream
    scaled = version.bundle.scaler.transform(raw_features)
    names = version.detector_names
    columns = []
    for name in names:
        started = time.perf_counter()
        columns.append(version.bundle.detectors[name].score_samples(scaled))
        DETECTOR_SECONDS.labels(stream, name).observe(time.perf_counter() - started)
    scores = np.column_stack(columns) if columns else np.empty((len(scaled), 0))
    flags = scores < version.offsets[None, :]
    alerting = version.alerting_mask
    fired = flags[:, alerting]
    top = min(top, scaled.shape[1])
    top_features = np.argsort(-np.abs(scaled), axis=1)[:, :top]
    return ScoredBatch(
        scores=scores,
        flags=flags,
        alert=np.asarray(
            fired.any(axis=1)
            if version.combination is None
            else version.combination.score_samples(scores) < version.combination.offset
        ),
        severity_score=fired.mean(axis=1) if fired.shape[1] else np.zeros(len(scaled)),
        top_features=top_features,
        top_z=np.take_along_axis(scaled, top_features, axis=1),
    )
