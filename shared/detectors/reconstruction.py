"""What the reconstruction detectors share (ICA, AAKR, VAE): a row is rebuilt from what normal rows look like,
and its residual, the squared reconstruction error summed over features, is its anomaly score.

`last_columns` lets a detector read only a feature vector's trailing columns: a stream that puts a
window's history first and its current row last (the sensor stream) gives row-wise detectors just the
row. The reconstruction runs in fixed-shape blocks (`fixed_blocks`), so a row's score does not depend on
the rows beside it, and memory stays bounded by the block, whatever the batch.
"""

from __future__ import annotations

from abc import abstractmethod
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks


class ReconstructionDetector(Detector):
    """Subclasses learn in `_fit_reconstruction` and rebuild one block of selected columns in `_reconstruct`."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "last_columns": [Interval(Integral, 1, None, closed="left"), None],
    }

    last_columns: int | None

    def _fit(self, X: Matrix) -> None:
        width = X.shape[1] if self.last_columns is None else min(self.last_columns, X.shape[1])
        self.first_column_ = X.shape[1] - width
        self._fit_reconstruction(X[:, self.first_column_ :])

    def _score(self, X: Matrix) -> Vector:
        return -self._squared_errors(X).sum(axis=1)

    def feature_contributions(self, X: ArrayLike) -> Matrix:
        """Each read column's squared reconstruction error (they sum to the residual); 0 for columns not read."""
        check_is_fitted(self)
        rows = validate_data(self, X, dtype=np.float64, reset=False)
        contributions = np.zeros_like(rows)
        contributions[:, self.first_column_ :] = self._squared_errors(rows)
        return contributions

    def _squared_errors(self, X: Matrix) -> Matrix:
        selected = X[:, self.first_column_ :]
        return np.asarray((selected - in_fixed_blocks(self._reconstruct, selected)) ** 2)

    @abstractmethod
    def _fit_reconstruction(self, X: Matrix) -> None:
        """Learn from the selected columns of the training rows."""

    @abstractmethod
    def _reconstruct(self, block: Matrix) -> Matrix:
        """Rebuild one fixed-shape block of selected columns (row i of the result depends on row i only)."""
