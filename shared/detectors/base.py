"""The contract every detector kind keeps: scikit-learn's outlier detector.

`score_samples` is higher for more normal rows; `offset_` is the operating point, so
`decision_function = score_samples - offset_` and `predict` is -1 exactly where that is negative.
`fit` places `offset_` so that a `contamination` fraction of the training rows falls below it; the
trainer later moves it to a threshold computed on held-out normal data (`shared.thresholds`) with
`set_offset`, which needs no refit.

A detector whose residual is a sum over features (a reconstruction error, a distance to a neighbour) may
also keep `ExplainsResidual`: each feature's share of a row's residual, which alert reports aggregate
(a sensor stream names the sensors behind an alert).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from numbers import Real
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]


class Detector(OutlierMixin, BaseEstimator, ABC):
    """Base of every detector kind: subclasses learn in `_fit` and score validated float64 rows in `_score`.

    Parameters are checked in one place, `_parameter_constraints` (scikit-learn's mechanism, which
    `build_detector` also runs so a bad stream config fails before training).
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "contamination": [Interval(Real, 0.0, 0.5, closed="right")],
    }

    contamination: float
    offset_: float

    def fit(self, X: ArrayLike, y: object = None) -> Self:
        """Learn from (mostly) normal rows; `y` is ignored."""
        self._validate_params()
        rows = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        self._fit(rows)
        self.offset_ = float(np.percentile(self._score(rows), 100.0 * self.contamination))
        return self

    def score_samples(self, X: ArrayLike) -> Vector:
        """Normality of each row: the higher, the more normal."""
        check_is_fitted(self)
        rows = validate_data(self, X, dtype=np.float64, reset=False)
        return self._score(rows)

    def decision_function(self, X: ArrayLike) -> Vector:
        """`score_samples - offset_`: negative for the rows the detector flags."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """+1 for a normal row, -1 for an outlier."""
        return np.where(self.decision_function(X) < 0.0, -1, 1)

    def set_offset(self, offset: float) -> Self:
        """Move the operating point to `offset` (on `score_samples`) without refitting.

        The one learned attribute that changes after `fit`: the active threshold method is a choice
        that can change without retraining, e.g.
        `detector.set_offset(thresholds.offset(ThresholdMethod.FLEET_BUDGET))`.
        """
        check_is_fitted(self)
        if not math.isfinite(offset):
            raise ValueError(f"offset must be a finite number, got {offset!r}")
        self.offset_ = float(offset)
        return self

    def continuing(self, fitted: Detector) -> Self:
        """Start the next `fit` from `fitted`, a parent version's detector of the same entry, where this kind can
        continue training (a network's weights: incremental training); other kinds learn afresh."""
        return self

    @abstractmethod
    def _fit(self, X: Matrix) -> None:
        """Set the learned attributes (names ending with `_`) from validated training rows."""

    @abstractmethod
    def _score(self, X: Matrix) -> Vector:
        """`score_samples` of validated rows, vectorised over the batch."""


@runtime_checkable
class ExplainsResidual(Protocol):
    """A detector that can split each row's residual (`-score_samples`, up to a constant) over its features."""

    def feature_contributions(self, X: ArrayLike) -> Matrix:
        """(n_rows, n_features_in_) non-negative parts of each row's residual (for `OnFeatures` around a kind
        without a split of its own: each read feature's squared value); a feature it does not read gets 0."""
        ...
