"""Variational autoencoder (seed 003's VAE model): the reconstruction error of a row through a small VAE.

An encoder maps a standardised row to a Gaussian over a `latent_dim`-dimensional code, a decoder maps
a code back; training minimises the squared reconstruction error plus `beta` times the KL divergence of
the codes from a standard normal, so the network learns the normal rows' structure, not the identity.
A row's residual is its squared reconstruction error through the code's mean (deterministic).

Trained with Keras 3 on the JAX backend, CPU (the optional `deep` extra: `pip install 'fleetwatch[deep]'`),
seeded, with early stopping on a tenth of the rows held out. Only the weights are kept, as numpy arrays,
and scoring is a numpy forward pass in fixed-shape blocks: the pickled detector holds no Keras object,
and a worker scores a version with a VAE without Keras or JAX installed.

>>> import numpy as np
>>> from shared.detectors.vae import VAEDetector
>>> rng = np.random.default_rng(0)
>>> t = rng.normal(size=(600, 1))
>>> X = np.hstack([t, 2 * t, -t]) + 0.05 * rng.normal(size=(600, 3))
>>> VAEDetector(latent_dim=1, random_state=0).fit(X).predict([[1.0, 2.0, -1.0], [1.0, -2.0, 1.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from shared.detectors.base import Matrix
from shared.detectors.keras_backend import TRAINING_CONSTRAINTS, fit_with_early_stopping, keras_for_training
from shared.detectors.reconstruction import ReconstructionDetector

LAYERS = ("encoder", "code_mean", "decoder", "output")
"""The dense layers of the scoring path, in order; the code's log-variance is used only in training."""


class VAEDetector(ReconstructionDetector):
    """`hidden_units` per hidden layer, `latent_dim` (capped at n_features - 1), `beta` weighs the KL term."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **ReconstructionDetector._parameter_constraints,
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_units": [Interval(Integral, 1, None, closed="left")],
        "beta": [Interval(Real, 0.0, None, closed="left")],
        **TRAINING_CONSTRAINTS,
    }
    kind_name = "vae"

    def __init__(
        self,
        *,
        latent_dim: int = 4,
        hidden_units: int = 32,
        beta: float = 0.1,
        epochs: int = 100,
        batch_size: int = 256,
        patience: int = 5,
        learning_rate: float = 1e-3,
        max_train_samples: int = 100_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.latent_dim = latent_dim
        self.hidden_units = hidden_units
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.learning_rate = learning_rate
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit_reconstruction(self, X: Matrix) -> None:
        random_state = check_random_state(self.random_state)
        if X.shape[0] > self.max_train_samples:
            X = X[random_state.choice(X.shape[0], self.max_train_samples, replace=False)]
        self.mean_ = X.mean(axis=0)
        self.scale_ = np.where(X.std(axis=0) > 1e-9, X.std(axis=0), 1.0)
        standardised = ((X - self.mean_) / self.scale_)[random_state.permutation(X.shape[0])]
        seed = int(random_state.randint(0, 2**31 - 1))
        self.weights_, self.n_epochs_ = _train(self, standardised, seed)

    def _reconstruct(self, block: Matrix) -> Matrix:
        (encoder, encoder_bias), (mean, mean_bias), (decoder, decoder_bias), (output, output_bias) = self.weights_
        hidden = np.maximum(((block - self.mean_) / self.scale_) @ encoder + encoder_bias, 0.0)
        code = hidden @ mean + mean_bias
        rebuilt = np.maximum(code @ decoder + decoder_bias, 0.0) @ output + output_bias
        return np.asarray(rebuilt * self.scale_ + self.mean_)


def _train(detector: VAEDetector, X: Matrix, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Fit the Keras model; return the scoring path's (kernel, bias) pairs as float64 arrays and the epochs run."""
    keras = keras_for_training("vae")
    layers, ops = keras.layers, keras.ops

    keras.utils.set_random_seed(seed)
    width, latent = X.shape[1], max(1, min(detector.latent_dim, X.shape[1] - 1))

    class CodeSample(layers.Layer):  # type: ignore[name-defined]  # z = mean + exp(log_var / 2) * noise
        def __init__(self) -> None:
            super().__init__()
            self.seeds = keras.random.SeedGenerator(seed)

        def call(self, mean: Any, log_var: Any) -> Any:
            return mean + ops.exp(0.5 * log_var) * keras.random.normal(ops.shape(mean), seed=self.seeds)

    inputs = keras.Input((width,))
    hidden = layers.Dense(detector.hidden_units, activation="relu", name="encoder")(inputs)
    mean = layers.Dense(latent, name="code_mean")(hidden)
    log_var = layers.Dense(latent, name="code_log_var")(hidden)
    decoder = layers.Dense(detector.hidden_units, activation="relu", name="decoder")
    output = layers.Dense(width, name="output")
    rebuilt = output(decoder(CodeSample()(mean, log_var)))
    model = keras.Model(inputs, layers.Concatenate()([rebuilt, mean, log_var]))

    def loss(target: Any, predicted: Any) -> Any:
        rebuilt, mean, log_var = (
            predicted[:, :width],
            predicted[:, width : width + latent],
            predicted[:, width + latent :],
        )
        error = ops.sum(ops.square(target - rebuilt), axis=1)
        divergence = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=1)
        return error + detector.beta * divergence

    model.compile(optimizer=keras.optimizers.Adam(detector.learning_rate), loss=loss)
    epochs = fit_with_early_stopping(keras, model, X, X, detector)
    weights = [tuple(np.asarray(w, dtype=np.float64) for w in model.get_layer(name).get_weights()) for name in LAYERS]
    return [(kernel, bias) for kernel, bias in weights], epochs
