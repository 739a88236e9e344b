"""k-nearest-neighbour distance and the local outlier factor: anomalies are rows far from, or much sparser
than, their nearest training rows.

Both keep a sample of the training rows (`max_train_samples`: a neighbour query costs time in
proportion to the rows kept) in scikit-learn's neighbour index. `KNNDetector` scores a row by its
distance to its `n_neighbors`-th nearest training row (`method="largest"`) or the mean distance to
the `n_neighbors` nearest (`"mean"`); `LOFDetector` is `LocalOutlierFactor(novelty=True)`: the row's
reachability density against its neighbours' own. Brute-force distances are a BLAS product, so both
query in fixed-shape blocks (`fixed_blocks`) and a row scores the same in any batch.

>>> import numpy as np
>>> from shared.detectors.neighbours import KNNDetector, LOFDetector
>>> X = np.random.default_rng(0).normal(size=(300, 2))
>>> KNNDetector().fit(X).predict([[0.0, 0.1], [6.0, -6.0]])
array([ 1, -1])
>>> LOFDetector().fit(X).predict([[0.0, 0.1], [6.0, -6.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks

_NEIGHBOUR_CONSTRAINTS: dict[str, list[Any]] = {
    **Detector._parameter_constraints,
    "n_neighbors": [Interval(Integral, 1, None, closed="left")],
    "max_train_samples": [Interval(Integral, 2, None, closed="left")],
    "random_state": ["random_state"],
}


def _training_sample(X: Matrix, max_rows: int, random_state: int | None) -> Matrix:
    if X.shape[0] <= max_rows:
        return X
    return X[check_random_state(random_state).choice(X.shape[0], max_rows, replace=False)]


class KNNDetector(Detector):
    """Distance to the `n_neighbors`-th nearest training row (capped at the rows kept), or the mean to all k."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **_NEIGHBOUR_CONSTRAINTS,
        "method": [StrOptions({"largest", "mean"})],
    }

    def __init__(
        self,
        *,
        n_neighbors: int = 5,
        method: str = "largest",
        max_train_samples: int = 20_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.method = method
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        sample = _training_sample(X, self.max_train_samples, self.random_state)
        self.n_neighbors_ = min(self.n_neighbors, sample.shape[0])
        self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors_).fit(sample)

    def _score(self, X: Matrix) -> Vector:
        distances = in_fixed_blocks(lambda block: self.index_.kneighbors(block)[0], X)
        return -(distances[:, -1] if self.method == "largest" else distances.mean(axis=1))


class LOFDetector(Detector):
    """scikit-learn's `LocalOutlierFactor` in novelty mode; `n_neighbors` is capped at the rows kept minus one."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {**_NEIGHBOUR_CONSTRAINTS}

    def __init__(
        self,
        *,
        n_neighbors: int = 20,
        max_train_samples: int = 20_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        sample = _training_sample(X, self.max_train_samples, self.random_state)
        self.lof_ = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, sample.shape[0] - 1), novelty=True)
        self.lof_.fit(sample)

    def _score(self, X: Matrix) -> Vector:
        return in_fixed_blocks(self.lof_.score_samples, X)
