"""Independent component analysis (seed 003's ICA model): the FastICA reconstruction residual of a row.

FastICA unmixes the training rows into `n_components` independent sources (a share of the variance to
keep, or a number); a row is mapped to its sources and mixed back, and the squared error of that
reconstruction is its residual. With fewer sources than features the reconstruction keeps the whitened
subspace of the top principal directions, so the residual measures how far a row leaves the relations
the sensors keep with each other (a broken correlation, a spike in one sensor), like PCA's residual on
the same subspace; the unmixing itself is what the model's sources are (`components_`, `mixing_`).
At least one direction is always left out, or every row would reconstruct exactly.

>>> import numpy as np
>>> from shared.detectors.ica import ICADetector
>>> rng = np.random.default_rng(0)
>>> t = rng.laplace(size=(400, 2))
>>> X = np.column_stack([t[:, 0], t[:, 1], t[:, 0] + t[:, 1]]) + 0.05 * rng.normal(size=(400, 3))
>>> ICADetector(random_state=0).fit(X).predict([[1.0, 1.0, 2.0], [1.0, 1.0, -2.0]])
array([ 1, -1])
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, RealNotInt

from shared.detectors.base import Matrix
from shared.detectors.reconstruction import ReconstructionDetector


class ICADetector(ReconstructionDetector):
    """`n_components`: a share of variance to keep (float) or a number of sources (int); `max_iter` of FastICA."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **ReconstructionDetector._parameter_constraints,
        "n_components": [Interval(Integral, 0, None, closed="left"), Interval(RealNotInt, 0.0, 1.0, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_components: int | float = 0.95,
        max_iter: int = 400,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.max_iter = max_iter
        self.contamination = contamination
        self.random_state = random_state

    def _fit_reconstruction(self, X: Matrix) -> None:
        self.mean_ = X.mean(axis=0)
        sources = min(self._sources(X), X.shape[1] - 1, X.shape[0] - 1)
        self.components_ = np.zeros((0, X.shape[1]))
        self.mixing_ = np.zeros((X.shape[1], 0))
        self.n_iter_ = 1  # nothing to unmix: the reconstruction is the mean
        if sources < 1:
            return
        with warnings.catch_warnings():
            # A tolerance not reached in max_iter still leaves a usable unmixing; the residual does not need more.
            warnings.simplefilter("ignore", ConvergenceWarning)
            ica = FastICA(
                n_components=sources, whiten="unit-variance", max_iter=self.max_iter, random_state=self.random_state
            ).fit(X)
        self.components_, self.mixing_, self.n_iter_ = ica.components_, ica.mixing_, int(ica.n_iter_)

    def _sources(self, X: Matrix) -> int:
        if not isinstance(self.n_components, float):
            return int(self.n_components)
        ratios = PCA(svd_solver="full").fit(X).explained_variance_ratio_
        explained = np.nan_to_num(np.cumsum(ratios), nan=1.0)  # constant data: 0/0
        rank = int(np.count_nonzero(ratios > 1e-12))
        return min(int(np.searchsorted(explained, self.n_components) + 1), rank)

    def _reconstruct(self, block: Matrix) -> Matrix:
        return np.asarray(((block - self.mean_) @ self.components_.T) @ self.mixing_.T + self.mean_)
