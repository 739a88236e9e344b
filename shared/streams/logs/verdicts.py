"""Session verdicts: every line is scored with its session so far, and a session's end-of-session record with
the complete session; a session is as anomalous as its worst row.

The batch tools (`fleetwatch logs infer / validate / compare`) and the benchmark judge sessions, not lines:
per session key, each detector's score is the lowest `score_samples` of its lines (the line at which the
session looked most anomalous), its verdict is that score below the detector's active threshold, and the
fleet's verdict is "some line alerted" (the combined score, or the any-detector rule of an older version,
below its threshold). A key that the idle timeout split into several sessions is judged as one, because
labels (HDFS block ids) name keys.

>>> import numpy as np
>>> keys = np.array(["b", "a", "b"], dtype=object)
>>> scores = np.array([[0.5], [0.9], [-0.2]])
>>> worst_per_key(keys, scores[:, 0])[0].tolist(), worst_per_key(keys, scores[:, 0])[1].tolist()
(['a', 'b'], [0.9, -0.2])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shared.evaluation import DetectionMetrics, FleetEvaluation
from shared.model_version import DeployedVersion
from shared.scoring import ScoredBatch, score_batch
from shared.streams.logs.sessions import FEATURE_NAMES

SESSION_LINES, SESSION_CLOSED = FEATURE_NAMES.index("session_lines"), FEATURE_NAMES.index("session_closed")


def worst_per_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys (sorted), the minimum of `values` per key, and the row where it is reached (first if tied)."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((values, inverse))  # by key, then value: each key's first row is its minimum
    starts = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]]) if len(order) else order
    worst = order[starts]
    return distinct, values[worst], worst


@dataclass(frozen=True)
class SessionVerdicts:
    """Per session key: line counts, time span, each detector's worst score and the fleet's verdict."""

    detector_names: list[str]
    shadow: frozenset[str]
    offsets: np.ndarray  # (detectors,) active thresholds on score_samples
    keys: np.ndarray  # (sessions,) sorted
    lines: np.ndarray  # lines per key
    sessions: np.ndarray  # sessions per key (more than 1 when the idle timeout or an end template split it)
    first_s: np.ndarray
    last_s: np.ndarray
    scores: np.ndarray  # (sessions, detectors) the lowest score_samples of the key's lines
    worst_line: np.ndarray  # (sessions, detectors) the line (row of the scored history) of that score
    fleet_margin: np.ndarray  # (sessions,) the fleet's lowest line score minus its threshold: < 0 alerts
    fleet_line: np.ndarray  # (sessions,) the line of that margin
    combined: bool
    line_scores: ScoredBatch  # every line's scores, for the line-level outputs

    @classmethod
    def of(
        cls, version: DeployedVersion, session_keys: np.ndarray, times_s: np.ndarray, raw_features: np.ndarray
    ) -> SessionVerdicts:
        """Score every row (line or end record) with `version` and judge each key."""
        scored = score_batch(version, raw_features)
        names = version.detector_names
        offsets = version.offsets
        if version.combination is not None:
            margin = version.combination.score_samples(scored.scores) - version.combination.offset
        else:
            alerting = version.alerting_mask
            margin = np.min((scored.scores - offsets[None, :])[:, alerting], axis=1)
        margin = np.where(scored.alert, np.minimum(margin, -1e-12), np.maximum(margin, 0.0))  # sign = the verdict
        keys, fleet_margin, fleet_line = worst_per_key(session_keys, margin)
        columns = [worst_per_key(session_keys, scored.scores[:, j]) for j in range(len(names))]
        inverse = np.searchsorted(keys, session_keys)
        is_line = raw_features[:, SESSION_CLOSED] == 0
        count = np.bincount(inverse, weights=is_line, minlength=len(keys))
        opens = is_line & (raw_features[:, SESSION_LINES] == 1)
        first_s = np.full(len(keys), np.inf)
        last_s = np.full(len(keys), -np.inf)
        np.minimum.at(first_s, inverse, times_s)
        np.maximum.at(last_s, inverse, times_s)
        return cls(
            detector_names=names,
            shadow=frozenset(e.name for e in version.manifest.detectors if e.mode == "shadow"),
            offsets=offsets,
            keys=keys,
            lines=count.astype(np.int64),
            sessions=np.bincount(inverse, weights=opens, minlength=len(keys)).astype(np.int64),
            first_s=first_s,
            last_s=last_s,
            scores=np.column_stack([c[1] for c in columns]) if columns else np.zeros((len(keys), 0)),
            worst_line=np.column_stack([c[2] for c in columns]) if columns else np.zeros((len(keys), 0), np.int64),
            fleet_margin=fleet_margin,
            fleet_line=fleet_line,
            combined=version.combination is not None,
            line_scores=scored,
        )

    @property
    def flags(self) -> np.ndarray:
        """(sessions, detectors): the detector's worst line is below its threshold."""
        return self.scores < self.offsets[None, :]

    @property
    def alert(self) -> np.ndarray:
        return self.fleet_margin < 0.0

    def evaluate(self, is_anomalous: np.ndarray, rows: np.ndarray | None = None) -> FleetEvaluation:
        """Session-level quality against ground truth (True = anomalous) of the keys `rows` (default: all), as
        `evaluate_fleet` reports it."""
        rows = np.arange(len(self.keys)) if rows is None else rows
        truth = np.asarray(is_anomalous, dtype=bool)
        if truth.shape != rows.shape or truth.all() or not truth.any():
            raise ValueError("the labelled sessions must hold both normal and anomalous ones")
        flags = self.flags[rows]
        margins = self.scores[rows] - self.offsets[None, :]
        detectors = {
            name: DetectionMetrics.measure(truth, -margins[:, j], flags[:, j])
            for j, name in enumerate(self.detector_names)
        }
        fleet = DetectionMetrics.measure(truth, -self.fleet_margin[rows], self.alert[rows])
        return FleetEvaluation(detectors, fleet, self.shadow, self.combined)


def session_labels_for(keys: np.ndarray, labels: Mapping[str, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Which keys have a label, and those keys' labels (True = anomalous)."""
    known = np.array([key in labels for key in keys.tolist()], dtype=bool)
    return known, np.array([labels[key] for key in keys[known].tolist()], dtype=bool)
