"""PCA reconstruction error: normal rows lie near the training data's principal subspace, anomalies off it.

The detector keeps the top principal components that explain `n_components` of the training
variance (a share in (0, 1)) or exactly that many (an int), but always leaves at least one direction
out, and scores a row by the negative squared distance between it and its projection on those
components: the residual is exposed as the score. It catches rows that break the correlations
between features even when each feature alone looks ordinary. The projection is a BLAS product, so
it runs in fixed-shape blocks (`fixed_blocks`).

>>> import numpy as np
>>> from shared.detectors.pca import PCADetector
>>> rng = np.random.default_rng(0)
>>> t = rng.normal(size=(300, 1))
>>> X = np.hstack([t, 2 * t, -t]) + 0.05 * rng.normal(size=(300, 3))
>>> PCADetector().fit(X).predict([[1.0, 2.0, -1.0], [1.0, -2.0, 1.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.decomposition import PCA
from sklearn.utils._param_validation import Interval, RealNotInt

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks


class PCADetector(Detector):
    """`n_components`: a share of variance to explain (float) or a number of components (int)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "n_components": [Interval(Integral, 0, None, closed="left"), Interval(RealNotInt, 0.0, 1.0, closed="neither")],
    }

    def __init__(self, *, n_components: int | float = 0.9, contamination: float = 0.01) -> None:
        self.n_components = n_components
        self.contamination = contamination

    def _fit(self, X: Matrix) -> None:
        pca = PCA(svd_solver="full").fit(X)
        if isinstance(self.n_components, float):
            explained = np.nan_to_num(np.cumsum(pca.explained_variance_ratio_), nan=1.0)  # constant data: 0/0
            kept = int(np.searchsorted(explained, self.n_components) + 1)
        else:
            kept = self.n_components
        self.mean_ = pca.mean_
        self.components_ = pca.components_[: max(0, min(kept, X.shape[1] - 1, pca.components_.shape[0]))]

    def _score(self, X: Matrix) -> Vector:
        return -in_fixed_blocks(self._residual, X - self.mean_)

    def _residual(self, centred: np.ndarray) -> np.ndarray:
        reconstructed = (centred @ self.components_.T) @ self.components_
        return np.sum((centred - reconstructed) ** 2, axis=1)
