"""Autoencoder: a small bottlenecked network that reconstructs normal rows and fails on unusual ones.

It catches anomalies that are unusual combinations of ordinary feature values, which per-feature
baselines miss. `MLPRegressor` trained to map standardised rows to themselves is enough at the
fleet's feature widths and keeps the artifact a plain scikit-learn object. The score is the negative
mean squared reconstruction error per row, so the residual is exposed as a score like every other
detector. Training uses at most `max_train_samples` rows (a uniform subsample), because a few
hundred thousand rows already pin down a network this small.

>>> import numpy as np
>>> from shared.detectors.autoencoder import AutoencoderDetector
>>> X = np.random.default_rng(0).normal(size=(300, 3))
>>> detector = AutoencoderDetector(hidden_layer_sizes=(8, 2, 8), max_iter=1000, random_state=0).fit(X)
>>> detector.predict([[0.0, 0.1, 0.0], [6.0, -6.0, 6.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.fixed_blocks import in_fixed_blocks

_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0), "logistic": expit}
"""The hidden activations `MLPRegressor` applies, as it computes them."""

VALIDATION_FRACTION = 0.1
"""Share of the training rows early stopping holds out to decide when to stop."""


class AutoencoderDetector(Detector):
    """`hidden_layer_sizes` runs encoder, bottleneck, decoder; keep the bottleneck below n_features.

    `tanh` hidden units saturate, so rows far outside the training range cannot be reconstructed,
    which is what makes them stand out. Early stopping needs two validation rows, so training sets
    of ten rows or fewer train for `max_iter` epochs.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "hidden_layer_sizes": ["array-like"],
        "activation": [StrOptions({"tanh", "relu", "logistic"})],
        "alpha": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "max_train_samples": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] = (16, 4, 16),
        activation: str = "tanh",
        alpha: float = 1e-4,
        max_iter: int = 200,
        early_stopping: bool = True,
        max_train_samples: int = 100_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        random_state = check_random_state(self.random_state)
        if X.shape[0] > self.max_train_samples:
            X = X[random_state.choice(X.shape[0], self.max_train_samples, replace=False)]
        self.scaler_ = StandardScaler().fit(X)
        standardised = self.scaler_.transform(X)
        # MLPRegressor warns on a one-column 2-D target; a 1-D target is the same problem.
        target = standardised.ravel() if standardised.shape[1] == 1 else standardised
        self.network_ = MLPRegressor(
            hidden_layer_sizes=self.hidden_layer_sizes,
            activation=self.activation,
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=self.early_stopping and standardised.shape[0] * VALIDATION_FRACTION > 1.0,
            validation_fraction=VALIDATION_FRACTION,
            random_state=random_state,
        ).fit(standardised, target)
        self.n_iter_: int = self.network_.n_iter_

    def _score(self, X: Matrix) -> Vector:
        standardised = self.scaler_.transform(X)
        return -np.mean((standardised - in_fixed_blocks(self._reconstruct, standardised)) ** 2, axis=1)

    def _reconstruct(self, standardised: np.ndarray) -> np.ndarray:
        """The network's forward pass (`MLPRegressor.predict`) on one fixed-shape block (`fixed_blocks`), so a
        row scores the same in a worker's micro-batch, in batch mode and in a Spark partition."""
        activation = _ACTIVATIONS[self.activation]
        layers = list(zip(self.network_.coefs_, self.network_.intercepts_, strict=True))
        values = standardised
        for depth, (weights, bias) in enumerate(layers):
            values = values @ weights + bias
            if depth < len(layers) - 1:  # the regressor's output layer is the identity
                values = activation(values)
        return values.reshape(standardised.shape)
