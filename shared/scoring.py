"""Scoring a batch against every detector of one deployed version: pure, vectorized, Kafka-free.

An event alerts when any alerting (non-shadow) detector scores it below its active threshold, or, for a
version with a combination (`shared.detectors.combination`), when the combined score is below its offset. Its
severity is the share of alerting detectors that fired (low / medium / high), and its report names
the features that stood out most: the largest |z| against the training distribution, which is what
the fitted scaler's standardised values are.

A stream whose features follow named groups (`Stream.feature_groups`: a sensor stream's sensors) also gets,
for its alerts only, each group's share of the residual: every alerting detector that fired and can split
its residual over the features (`ExplainsResidual`; a detector on some columns splits its inner detector's,
or gives each of its columns its squared z value when the inner one cannot) gives each feature its share,
the shares are averaged over those detectors and summed per group (squared z values of every feature stand
in when none can). Streams without groups skip this entirely.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.detectors import ExplainsResidual
from shared.metrics import DETECTOR_SECONDS
from shared.model_version import DeployedVersion
from shared.pipeline import FeatureGroups

SEVERITY_LEVELS = ("low", "medium", "high")


@dataclass(frozen=True)
class ScoredBatch:
    scores: np.ndarray  # (n, k) score_samples, higher = more normal
    flags: np.ndarray  # (n, k) score < active threshold
    alert: np.ndarray  # (n,) any alerting detector flagged, or the combined score is below its offset
    severity_score: np.ndarray  # (n,) share of alerting detectors that flagged
    top_features: np.ndarray  # (n, top) indices into the version's feature names, by |z| descending
    top_z: np.ndarray  # (n, top) the z values of those features
    group_names: tuple[str, ...] = ()  # the stream's feature groups (sensors), if it has any
    top_groups: np.ndarray | None = None  # (n, top) indices into group_names by share, descending; -1: none
    top_group_shares: np.ndarray | None = None  # (n, top) those groups' shares of the residual (alert rows only)

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
    alert = np.asarray(
        fired.any(axis=1)
        if version.combination is None
        else version.combination.score_samples(scores) < version.combination.offset
    )
    groups = version.stream.feature_groups()
    top_groups = _top_groups(version, scaled, flags, alert, groups, top) if groups is not None else (None, None)
    top = min(top, scaled.shape[1])
    top_features = np.argsort(-np.abs(scaled), axis=1)[:, :top]
    return ScoredBatch(
        scores=scores,
        flags=flags,
        alert=alert,
        severity_score=fired.mean(axis=1) if fired.shape[1] else np.zeros(len(scaled)),
        top_features=top_features,
        top_z=np.take_along_axis(scaled, top_features, axis=1),
        group_names=groups.names if groups is not None else (),
        top_groups=top_groups[0],
        top_group_shares=top_groups[1],
    )


def _top_groups(
    version: DeployedVersion, scaled: np.ndarray, flags: np.ndarray, alert: np.ndarray, groups: FeatureGroups, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """For alert rows, the `top` groups by share of the residual and their shares; -1 and 0 elsewhere."""
    top = min(top, len(groups.names))
    indices, shares = np.full((len(scaled), top), -1), np.zeros((len(scaled), top))
    rows = np.flatnonzero(alert)
    if not len(rows) or not top:
        return indices, shares
    explaining = [
        (j, detector)
        for j, (name, alerting) in enumerate(zip(version.detector_names, version.alerting_mask.tolist(), strict=True))
        if alerting and isinstance(detector := version.bundle.detectors[name], ExplainsResidual)
    ]
    weights = flags[np.ix_(rows, np.array([j for j, _ in explaining], dtype=np.int64))].astype(np.float64)
    weights[weights.sum(axis=1) == 0] = 1.0  # the combined score fired without them: every one speaks
    per_feature = np.zeros((len(rows), scaled.shape[1]))
    for (_, detector), weight in zip(explaining, weights.T, strict=True):
        per_feature += weight[:, None] * _normalised(detector.feature_contributions(scaled[rows]))
    if not explaining:
        per_feature = _normalised(scaled[rows] ** 2)
    member = groups.of_feature >= 0
    by_group = _normalised(per_feature[:, member] @ np.eye(len(groups.names))[groups.of_feature[member]])
    order = np.argsort(-by_group, axis=1, kind="stable")[:, :top]
    indices[rows], shares[rows] = order, np.take_along_axis(by_group, order, axis=1)
    return indices, shares


def _normalised(parts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a row of zeros stays zeros)."""
    total = parts.sum(axis=1, keepdims=True)
    return np.divide(parts, total, out=np.zeros_like(parts), where=total > 0)
