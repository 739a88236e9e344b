"""What the reconstruction detectors share (ICA, AAKR, VAE): a row is rebuilt from what normal rows look like,
and its residual, the squared reconstruction error summed over features, is its anomaly score.

The reconstruction runs in fixed-shape blocks (`fixed_blocks`), so a row's score does not depend on the
rows beside it, and memory stays bounded by the block, whatever the batch. A detector that should read only
some of a stream's columns (the sensor stream's row-wise detectors: each sensor's spread and current row)
names them in its entry's `features` (`on_features`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks


class ReconstructionDetector(Detector):
    """Subclasses learn in `_fit_reconstruction` and rebuild one block of selected columns in `_reconstruct`."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Detectors pickled when they could read trailing columns themselves (`last_columns`) are refused."""
        if state.get("last_columns") is not None:
            raise ValueError(
                f"a {type(self).__name__} trained with `last_columns`, which this build reads through the detector "
                "entry's `features` instead"
            )
        super().__setstate__(state)

    def _fit(self, X: Matrix) -> None:
        self._fit_reconstruction(X)

    def _score(self, X: Matrix) -> Vector:
        return -self._squared_errors(X).sum(axis=1)

    def feature_contributions(self, X: ArrayLike) -> Matrix:
        """Each column's squared reconstruction error (they sum to the residual)."""
        check_is_fitted(self)
        return self._squared_errors(validate_data(self, X, dtype=np.float64, reset=False))

    def _squared_errors(self, X: Matrix) -> Matrix:
        return np.asarray((X - in_fixed_blocks(self._reconstruct, X)) ** 2)

    @abstractmethod
    def _fit_reconstruction(self, X: Matrix) -> None:
        """Learn from the training rows."""

    @abstractmethod
    def _reconstruct(self, block: Matrix) -> Matrix:
        """Rebuild one fixed-shape block of rows (row i of the result depends on row i only)."""
