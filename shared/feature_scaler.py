"""Standardising raw features before the detectors see them, for any stream."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.preprocessing import StandardScaler


class FeatureScaler:
    """Standardises raw features; fitted on the training split only (seed 003's leakage fix). The `passthrough`
    columns (identifiers such as a template key) are left as they are."""

    def __init__(self, passthrough: Sequence[int] = ()) -> None:
        self._scaler = StandardScaler()
        self._passthrough = list(passthrough)

    def fit(self, raw: np.ndarray) -> FeatureScaler:
        self._scaler.fit(raw)
        # A constant feature (e.g. a channel absent from training) must not divide by zero later.
        self._scaler.scale_ = np.where(self._scaler.scale_ > 1e-9, self._scaler.scale_, 1.0)
        self._scaler.mean_[self._passthrough] = 0.0
        self._scaler.scale_[self._passthrough] = 1.0
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(self._scaler.transform(raw))
