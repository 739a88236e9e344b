"""MS-CRED (Zhang et al., AAAI 2019): reconstructing the signature matrices of a multivariate series.

A row is a window of `n_series` series over the last `window_length` steps, flattened time-major (step 0's
values, then step 1's, ...; the newest last). At each of `steps` time points, `gap` steps apart and ending at
the newest, the detector computes one signature matrix per scale s in `scales`: M_s[i, j] = the mean over the
last s steps of x_i · x_j, the pairwise inner products that describe how the series move together. A
convolutional encoder reads each time point's matrices; at every encoder level a ConvLSTM runs over the time
points and a temporal attention (softmax of each step's similarity to the newest, scaled by 1/`attention_scale`)
weighs its outputs; a deconvolutional decoder, with the finer levels' attended maps joined in, reconstructs the
newest time point's matrices. The score is minus the squared residual of that reconstruction (higher = more
normal): a broken correlation, a stuck or a drifting series changes the matrices in a way normal windows never
did.

Trained with Keras 3 on JAX (CPU; `shared.detectors.keras_backend`), seeded, with early stopping. The weights
are kept as numpy arrays inside the pickled (signed) detector; the network is rebuilt from them on first use,
after the version's signature was checked, and scores a whole batch in one call. Unlike DeepLog and the VAE,
scoring needs Keras and JAX (the `deep` extra) in the worker: convolutions and a ConvLSTM have no small numpy
form.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> t = np.arange(600) / 10
>>> series = np.column_stack([np.sin(t), np.sin(t), np.cos(t), rng.normal(0, 0.1, len(t))])
>>> detector = MSCREDDetector(n_series=4, scales=(5, 10, 20), steps=3, gap=4, epochs=6, random_state=0)
>>> length = detector.window_length  # 20 steps for the largest scale, then 2 gaps of 4
>>> rows = np.array([series[i - length : i].ravel() for i in range(length, len(t), 3)])
>>> broken = series[-length:].copy(); broken[:, 1] *= -1  # series 1 stops following series 0
>>> normal, anomalous = detector.fit(rows).score_samples(np.vstack([series[-length:].ravel(), broken.ravel()]))
>>> bool(normal > anomalous)
True
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.keras_backend import TRAINING_CONSTRAINTS, fit_with_early_stopping, keras_for_training

LEVELS = (8, 16, 32)
"""Filters of the three encoder levels; the matrices' side is padded to a multiple of 4 for the two strides."""


class MSCREDDetector(Detector):
    """`n_series` series per step; `scales`, `steps` and `gap` as in the paper (there 10/30/60, 5 and 10)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "n_series": [Interval(Integral, 1, None, closed="left")],
        "scales": [tuple, list],
        "steps": [Interval(Integral, 1, None, closed="left")],
        "gap": [Interval(Integral, 1, None, closed="left")],
        "attention_scale": [Interval(Real, 0.0, None, closed="neither")],
        **TRAINING_CONSTRAINTS,
    }
    kind_name = "mscred"

    def __init__(
        self,
        *,
        n_series: int = 1,
        scales: tuple[int, ...] = (10, 30, 60),
        steps: int = 5,
        gap: int = 10,
        attention_scale: float = 5.0,
        epochs: int = 50,
        batch_size: int = 64,
        patience: int = 5,
        learning_rate: float = 1e-3,
        max_train_samples: int = 20_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.n_series = n_series
        self.scales = scales
        self.steps = steps
        self.gap = gap
        self.attention_scale = attention_scale
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.learning_rate = learning_rate
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    @property
    def window_length(self) -> int:
        """Steps a row must hold: the largest scale before the oldest time point, plus the gaps after it."""
        return max(self.scales) + (self.steps - 1) * self.gap

    def signature_matrices(self, X: Matrix) -> np.ndarray:
        """(rows, steps, side, side, scales): each time point's matrix per scale, zero-padded to `side`."""
        length, series = self.window_length, self.n_series
        if X.shape[1] < length * series:
            raise ValueError(
                f"rows need {length} steps of {series} series ({length * series} columns), got {X.shape[1]}"
            )
        windows = X[:, -length * series :].reshape(len(X), length, series)
        side = 4 * math.ceil(series / 4)
        out = np.zeros((len(X), self.steps, side, side, len(self.scales)))
        for step in range(self.steps):
            end = length - (self.steps - 1 - step) * self.gap
            for channel, scale in enumerate(self.scales):
                recent = windows[:, end - scale : end]
                out[:, step, :series, :series, channel] = np.einsum("nti,ntj->nij", recent, recent) / scale
        return out

    def _fit(self, X: Matrix) -> None:
        random_state = check_random_state(self.random_state)
        if X.shape[0] > self.max_train_samples:
            X = X[random_state.choice(X.shape[0], self.max_train_samples, replace=False)]
        matrices = self.signature_matrices(X)[random_state.permutation(len(X))]
        seed = int(random_state.randint(0, 2**31 - 1))
        self.weights_, self.n_epochs_ = _train(self, matrices, seed)

    def _network(self) -> Any:
        """The Keras network with the learned weights, built once per process (never pickled)."""
        network = self.__dict__.get("_network_cache")
        if network is None:
            network = _build(self, _side(self.n_series))
            network.set_weights(self.weights_)
            self.__dict__["_network_cache"] = network
        return network

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_network_cache"}

    def _score(self, X: Matrix) -> Vector:
        matrices = self.signature_matrices(X)
        rebuilt = np.asarray(self._network()(matrices, training=False), dtype=np.float64)
        series = self.n_series
        residual = (rebuilt - matrices[:, -1])[:, :series, :series, :]
        return np.asarray(-np.square(residual).sum(axis=(1, 2, 3)))


def _side(series: int) -> int:
    return 4 * math.ceil(series / 4)


def _build(detector: MSCREDDetector, side: int) -> Any:
    keras = keras_for_training("mscred")
    layers, ops = keras.layers, keras.ops
    channels = len(detector.scales)
    inputs = keras.Input((detector.steps, side, side, channels))

    def attend(sequence: Any) -> Any:
        """Temporal attention: each step weighed by the softmax of its similarity to the newest step."""
        newest = sequence[:, -1:]
        similarity = ops.sum(sequence * newest, axis=(2, 3, 4)) / detector.attention_scale
        weights = ops.softmax(similarity, axis=1)
        return ops.sum(sequence * weights[:, :, None, None, None], axis=1)

    encoded, attended = inputs, []
    for level, filters in enumerate(LEVELS):
        kernel, strides = (3, 1) if level == 0 else (3 if level == 1 else 2, 2)
        convolution = layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="selu")
        encoded = layers.TimeDistributed(convolution, name=f"encoder_{level}")(encoded)
        recurrent = layers.ConvLSTM2D(filters, kernel, padding="same", return_sequences=True, name=f"lstm_{level}")
        attended.append(layers.Lambda(attend, name=f"attention_{level}")(recurrent(encoded)))
    decoded = attended[-1]
    for level in range(len(LEVELS) - 2, -1, -1):
        kernel = 3 if level == 0 else 2
        decoded = layers.Conv2DTranspose(LEVELS[level], kernel, strides=2, padding="same", activation="selu")(decoded)
        decoded = layers.Concatenate()([decoded, attended[level]])
    outputs = layers.Conv2DTranspose(channels, 3, padding="same", name="matrices")(decoded)
    return keras.Model(inputs, outputs)


def _train(detector: MSCREDDetector, matrices: np.ndarray, seed: int) -> tuple[list[np.ndarray], int]:
    """Fit the network to reconstruct each row's newest matrices; return its weights and the epochs run."""
    keras = keras_for_training("mscred")
    keras.utils.set_random_seed(seed)
    network = _build(detector, matrices.shape[2])
    network.compile(optimizer=keras.optimizers.Adam(detector.learning_rate), loss="mse")
    epochs = fit_with_early_stopping(keras, network, matrices, matrices[:, -1], detector)
    return [np.asarray(w) for w in network.get_weights()], epochs
