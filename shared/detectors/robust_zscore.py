"""Robust z-score: the statistical baseline, and the source of "which features stood out".

Each feature is centred on its training median and scaled by its MAD, so a minority of anomalies in
the training sample barely moves the baseline. A row is as anomalous as its most deviant feature:
the score is `-max_j |z_j|`, a maximum rather than a sum of squares so that many mildly shifted
features do not outvote one clearly broken one, and so the score is the same number the alert report
shows for the top feature. `feature_deviations` gives every feature's signed z-score for that report.

>>> import numpy as np
>>> from shared.detectors.robust_zscore import RobustZScoreDetector
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> detector = RobustZScoreDetector().fit(X)
>>> detector.predict([[0.0, 0.1], [0.0, 9.0]])
array([ 1, -1])
>>> np.round(detector.feature_deviations([[0.0, 9.0]]), 1)
array([[0.1, 9. ]])
"""

from __future__ import annotations

from numbers import Real
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.detectors.base import Detector, Matrix, Vector

MAD_TO_SIGMA = 1.4826
"""The MAD of normal data times this is its standard deviation."""

MEAN_ABSOLUTE_DEVIATION_TO_SIGMA = 1.2533
"""sqrt(pi / 2): the mean absolute deviation of normal data times this is its standard deviation."""

DEFAULT_MIN_SCALE = 1e-9


def robust_location_scale(X: Matrix, *, min_scale: float = DEFAULT_MIN_SCALE) -> tuple[Vector, Vector]:
    """Per-column median and spread in units of a normal standard deviation.

    The spread is 1.4826 * MAD; where the MAD is zero (a column that is mostly one value) it falls
    back to 1.2533 * the mean absolute deviation from the median, and it is never below `min_scale`
    (a constant column), so every z-score is finite.
    """
    median = np.median(X, axis=0)
    absolute_deviations = np.abs(X - median)
    scale = np.where(
        (mad := np.median(absolute_deviations, axis=0)) > 0.0,
        MAD_TO_SIGMA * mad,
        MEAN_ABSOLUTE_DEVIATION_TO_SIGMA * np.mean(absolute_deviations, axis=0),
    )
    return median, np.maximum(scale, min_scale)


class RobustZScoreDetector(Detector):
    """Per-feature median/MAD baseline; `min_scale` is the floor of a feature's spread."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "min_scale": [Interval(Real, 0.0, None, closed="neither")],
    }

    def __init__(self, *, min_scale: float = DEFAULT_MIN_SCALE, contamination: float = 0.01) -> None:
        self.min_scale = min_scale
        self.contamination = contamination

    def feature_deviations(self, X: ArrayLike) -> Matrix:
        """Signed robust z-score of every feature of every row, shape (n_rows, n_features)."""
        check_is_fitted(self)
        return self._deviations(validate_data(self, X, dtype=np.float64, reset=False))

    def _fit(self, X: Matrix) -> None:
        self.median_, self.scale_ = robust_location_scale(X, min_scale=self.min_scale)

    def _score(self, X: Matrix) -> Vector:
        return -np.max(np.abs(self._deviations(X)), axis=1)

    def _deviations(self, X: Matrix) -> Matrix:
        return (X - self.median_) / self.scale_
