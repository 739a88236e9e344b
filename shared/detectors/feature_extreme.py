"""The largest of chosen features, negated: for features that are anomalous by themselves.

Some streams compute a feature that already *is* the evidence (a log line's template rarity, a count of
lines no template matched). Ranking rows by it, with the same thresholds as every other detector, is a
detector in its own right: the per-line check that needs no model. `columns` picks the features (all
when None); the score is minus the largest of them (higher = more normal, as for every kind).

>>> import numpy as np
>>> detector = FeatureExtremeDetector(columns=[1]).fit(np.array([[9.0, 0.0], [0.0, 0.1], [5.0, 0.2]]))
>>> detector.score_samples(np.array([[100.0, 0.1], [0.0, 3.0]])).tolist()
[-0.1, -3.0]
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shared.detectors.base import Detector, Matrix, Vector


class FeatureExtremeDetector(Detector):
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "columns": [list, tuple, None],
    }

    def __init__(self, *, columns: list[int] | tuple[int, ...] | None = None, contamination: float = 0.01) -> None:
        self.columns = columns
        self.contamination = contamination

    def _fit(self, X: Matrix) -> None:
        chosen = np.arange(X.shape[1]) if self.columns is None else np.asarray(self.columns, dtype=np.int64)
        if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= X.shape[1]:
            raise ValueError(f"columns {self.columns} do not index {X.shape[1]} features")
        self.columns_ = chosen

    def _score(self, X: Matrix) -> Vector:
        return -np.max(X[:, self.columns_], axis=1)
