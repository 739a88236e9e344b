"""One-class SVM that trains on a million rows: a Nystroem RBF feature map plus a linear SGD solver.

An exact kernel `OneClassSVM` costs O(n²) memory and between O(n²) and O(n³) time, which is hours at
the trainer's sample sizes. `Nystroem` approximates the RBF kernel with `n_components` landmark rows,
so `SGDOneClassSVM` solves the same problem in the mapped space in time linear in n; scoring a batch
is one kernel evaluation against the landmarks and a dot product. Nystroem is preferred over
`RBFSampler` (random Fourier features) because it adapts its landmarks to the data and needs fewer
components for the same accuracy. Rows are standardised first, so `gamma="scale"` (1 / n_features)
suits any feature units.

>>> import numpy as np
>>> from shared.detectors.ocsvm import OneClassSVMDetector
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> detector = OneClassSVMDetector(n_components=50, random_state=0).fit(X)
>>> detector.predict([[0.0, 0.1], [6.0, -6.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDOneClassSVM
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks


class OneClassSVMDetector(Detector):
    """`nu` bounds the SVM's own fraction of margin errors; `contamination` places `offset_`.

    `n_components` is capped at the number of training rows.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "nu": [Interval(Real, 0.0, 1.0, closed="right")],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0.0, None, closed="neither")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        nu: float = 0.05,
        gamma: float | str = "scale",
        n_components: int = 100,
        max_iter: int = 1000,
        tol: float | None = 1e-3,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.nu = nu
        self.gamma = gamma
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        n_samples, n_features = X.shape
        random_state = check_random_state(self.random_state)
        self.pipeline_: Pipeline = make_pipeline(
            StandardScaler(),
            Nystroem(
                kernel="rbf",
                gamma=1.0 / n_features if self.gamma == "scale" else self.gamma,
                n_components=min(self.n_components, n_samples),
                random_state=random_state,
            ),
            SGDOneClassSVM(nu=self.nu, max_iter=self.max_iter, tol=self.tol, random_state=random_state),
        ).fit(X)
        self.n_iter_: int = self.pipeline_[-1].n_iter_

    def _score(self, X: Matrix) -> Vector:
        """`pipeline_.score_samples`, computed in fixed-shape blocks (`fixed_blocks`): a row scores the same in a
        worker's micro-batch, in batch mode and in a Spark partition."""
        scaler, _, _ = self.pipeline_
        return in_fixed_blocks(self._score_block, scaler.transform(X))

    def _score_block(self, rows: np.ndarray) -> np.ndarray:
        _, nystroem, svm = self.pipeline_
        landmarks = nystroem.components_
        squared = -2.0 * (rows @ landmarks.T)  # the RBF kernel as sklearn's rbf_kernel builds it
        squared += np.sum(rows * rows, axis=1)[:, None]
        squared += np.sum(landmarks * landmarks, axis=1)[None, :]
        np.maximum(squared, 0.0, out=squared)
        squared *= -nystroem.gamma
        kernel = np.exp(squared, out=squared)
        return (kernel @ nystroem.normalization_.T) @ svm.coef_.ravel()
