"""A detector that sees only some of a stream's feature columns.

A stream's features are not all for every detector: a log session's template counts are quantities a
PCA can project, its last template keys are identifiers only a sequence model reads. A detector entry
that names its `features` (or a stream with categorical features) is fitted and scored through this
wrapper, which hands the inner detector its columns and keeps the operating point on the wrapper. An
alert's split of the residual over features (`feature_contributions`) is the inner detector's, on its columns.

>>> import numpy as np
>>> from shared.detectors.robust_zscore import RobustZScoreDetector
>>> X = np.zeros((20, 3)); X[:, 0] = np.arange(20)
>>> detector = OnFeatures(RobustZScoreDetector(), columns=[1, 2]).fit(X)
>>> detector.score_samples([[1e6, 0.0, 0.0]]).tolist()  # column 0 is not its concern
[-0.0]
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.detectors.base import Detector, ExplainsResidual, Matrix, Vector


class OnFeatures(Detector):
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "detector": [Detector],
        "columns": [list, tuple],
    }

    def __init__(self, detector: Detector, columns: list[int] | tuple[int, ...], contamination: float = 0.01) -> None:
        self.detector = detector
        self.columns = columns
        self.contamination = contamination

    def _fit(self, X: Matrix) -> None:
        chosen = np.asarray(self.columns, dtype=np.int64)
        if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= X.shape[1]:
            raise ValueError(f"columns {self.columns} do not index {X.shape[1]} features")
        self.columns_ = chosen
        inner = clone(self.detector)
        parent = self.__dict__.pop("_parent", None)
        self.detector_ = (inner.continuing(parent) if parent is not None else inner).fit(X[:, chosen])

    def continuing(self, fitted: Detector) -> OnFeatures:
        if isinstance(fitted, OnFeatures) and list(fitted.columns) == list(self.columns):
            self._parent = fitted.detector_
        return self

    def _score(self, X: Matrix) -> Vector:
        return np.asarray(self.detector_.score_samples(X[:, self.columns_]))

    def feature_contributions(self, X: ArrayLike) -> Matrix:
        """The wrapped detector's split of its residual over its columns (`ExplainsResidual`); for one that cannot
        split it, each column's squared value (how far the scaled feature is from the training centre); 0 for the
        columns it does not see."""
        check_is_fitted(self)
        rows = validate_data(self, X, dtype=np.float64, reset=False)
        seen = rows[:, self.columns_]
        explains = isinstance(self.detector_, ExplainsResidual)
        contributions = np.zeros_like(rows)
        contributions[:, self.columns_] = self.detector_.feature_contributions(seen) if explains else seen**2
        return contributions
