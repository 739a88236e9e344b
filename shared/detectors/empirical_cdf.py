"""ECOD and COPOD: how far into its own feature's tails a row lies, from empirical CDFs of the training rows.

Both keep each training column sorted; a value's left tail probability is the share of training
values at or below it, its right tail the share at or above it (one `np.searchsorted` per column,
with one pseudo-count so a value beyond the training range gets a small but finite probability). A
row's anomaly is the sum over features of `-log` tail probability, so many mildly extreme features
add up. They differ in which tail a feature contributes (Li et al. 2020 and 2022, as PyOD scores
them): ECOD takes the more extreme of the two tails per feature (PyOD's max with the skewness-chosen tail
adds nothing to that); COPOD takes the tail that the
feature's skewness points to, or the mean of both tails' `-log`, whichever is larger. Neither has a
parameter to tune, which is why they rank well across ADBench's data sets. The ECDFs come from the
training rows only (PyOD also pools the rows being scored), so a row's score never depends on its
batch.

>>> import numpy as np
>>> from shared.detectors.empirical_cdf import COPODDetector, ECODDetector
>>> X = np.random.default_rng(0).normal(size=(300, 3))
>>> ECODDetector().fit(X).predict([[0.0, 0.1, 0.0], [5.0, -5.0, 5.0]])
array([ 1, -1])
>>> COPODDetector().fit(X).predict([[0.0, 0.1, 0.0], [5.0, -5.0, 5.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from shared.detectors.base import Detector, Matrix, Vector


class _EmpiricalTailDetector(Detector):
    """Sorted training columns and their skewness; `max_train_samples` caps the rows kept (a uniform sample)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "max_train_samples": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self, *, max_train_samples: int = 100_000, contamination: float = 0.01, random_state: int | None = None
    ) -> None:
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        if X.shape[0] > self.max_train_samples:
            rows = check_random_state(self.random_state).choice(X.shape[0], self.max_train_samples, replace=False)
            X = X[rows]
        self.sorted_columns_ = np.sort(X, axis=0).T.copy()  # one contiguous row per feature for searchsorted
        centred = X - X.mean(axis=0)
        variance = np.mean(centred**2, axis=0)
        third_moment = np.mean(centred**3, axis=0)
        # A constant column has no skew; its sign is 0 and both tails count as for a symmetric feature.
        self.skew_sign_ = np.sign(np.where(variance > 0.0, third_moment, 0.0))

    def _tail_surprise(self, X: Matrix) -> tuple[Matrix, Matrix]:
        """`-log` left and right tail probabilities of every value, each of shape (n_rows, n_features)."""
        n_train = self.sorted_columns_.shape[1]
        left, right = np.empty_like(X), np.empty_like(X)
        for j, column in enumerate(self.sorted_columns_):  # a loop over features, vectorised over the batch
            left[:, j] = np.searchsorted(column, X[:, j], side="right")
            right[:, j] = n_train - np.searchsorted(column, X[:, j], side="left")
        return -np.log((left + 1.0) / (n_train + 1.0)), -np.log((right + 1.0) / (n_train + 1.0))

    def _skewed_tail(self, left: Matrix, right: Matrix) -> Matrix:
        """The tail each feature's skewness points to: right when skewed right, left when skewed left."""
        return np.where(self.skew_sign_ > 0, right, np.where(self.skew_sign_ < 0, left, 0.5 * (left + right)))


class ECODDetector(_EmpiricalTailDetector):
    """ECOD: per feature the more surprising tail, summed over features."""

    def _score(self, X: Matrix) -> Vector:
        left, right = self._tail_surprise(X)
        return -np.sum(np.maximum(left, right), axis=1)


class COPODDetector(_EmpiricalTailDetector):
    """COPOD: per feature the skewness-chosen tail or the mean of both tails, whichever is larger, summed."""

    def _score(self, X: Matrix) -> Vector:
        left, right = self._tail_surprise(X)
        return -np.sum(np.maximum(self._skewed_tail(left, right), 0.5 * (left + right)), axis=1)
