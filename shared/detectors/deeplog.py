"""DeepLog (Du et al., CCS 2017): an LSTM over a session's last template keys predicts the next key.

A row is `history` previous keys, oldest first (0 where the session has fewer lines), then the key to predict
(a log stream's `key_lag_*` and `key` features). Keys are small positive integers; a key the model never saw in
training (an unseen template) gets probability zero. The paper calls a key anomalous when it is not among the
`top_g` most probable next keys; here the score is the log-probability of the key that came (higher = more
normal), which every threshold method can place, and `top_g_flags` gives the paper's own rule.

Two stacked LSTM layers (the paper's 2 layers of 64 units) read one-hot keys; a softmax layer predicts the next.
Trained with Keras 3 on JAX (CPU; `shared.detectors.keras_backend`), seeded, with early stopping; only the
weights are kept, as numpy arrays, and scoring is a numpy forward pass over the whole batch at once (each
step is a few matrix products for every row), so a worker scores without Keras.

The per-key parameter-value model of the paper (a second LSTM per key over the line's parameters) is not built.

>>> import numpy as np
>>> cycle = np.tile([1, 2, 3, 4], 60)  # sessions that always go 1, 2, 3, 4, 1, ...
>>> rows = np.array([np.r_[np.zeros(max(0, 3 - i)), cycle[max(0, i - 3):i], cycle[i]] for i in range(len(cycle))])
>>> detector = DeepLogDetector(history=3, hidden_units=8, layers=1, epochs=60, random_state=0).fit(rows)
>>> expected, surprising = detector.score_samples([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 2.0]])
>>> bool(expected > surprising)
True
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from shared.detectors.base import Detector, Matrix, Vector
from shared.detectors.keras_backend import TRAINING_CONSTRAINTS, fit_with_early_stopping, keras_for_training

LOG_FLOOR = np.log(1e-12)
"""The log-probability of a key the model cannot predict at all (one it never saw)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class DeepLogDetector(Detector):
    """`history` keys (the paper's h), `layers` LSTM layers of `hidden_units`, `top_g` for the paper's rule."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "history": [Interval(Integral, 1, None, closed="left")],
        "hidden_units": [Interval(Integral, 1, None, closed="left")],
        "layers": [Interval(Integral, 1, None, closed="left")],
        "top_g": [Interval(Integral, 1, None, closed="left")],
        **TRAINING_CONSTRAINTS,
    }
    kind_name = "deeplog"
    weights_: list[Any]
    n_keys_: int

    def __init__(
        self,
        *,
        history: int = 10,
        hidden_units: int = 64,
        layers: int = 2,
        top_g: int = 9,
        epochs: int = 30,
        batch_size: int = 512,
        patience: int = 3,
        learning_rate: float = 2e-3,
        max_train_samples: int = 200_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.history = history
        self.hidden_units = hidden_units
        self.layers = layers
        self.top_g = top_g
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.learning_rate = learning_rate
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _keys(self, X: Matrix) -> tuple[np.ndarray, np.ndarray]:
        """The history and target keys of each row, as integers; keys beyond the vocabulary become `n_keys_`
        (one past the last class, which no training row had)."""
        if X.shape[1] < self.history + 1:
            raise ValueError(f"rows need {self.history} history keys and a target key, got {X.shape[1]} columns")
        keys = np.rint(X[:, -(self.history + 1) :]).astype(np.int64)
        return np.clip(keys[:, :-1], 0, None), np.clip(keys[:, -1], 0, None)

    def continuing(self, fitted: Detector) -> DeepLogDetector:
        """Fine-tune from a parent's network of the same shape: its weights start the training (keys the parent
        never saw get fresh zero rows), so `--incremental` keeps what the parent learnt."""
        same_shape = isinstance(fitted, DeepLogDetector) and (fitted.history, fitted.layers, fitted.hidden_units) == (
            self.history, self.layers, self.hidden_units,
        )  # fmt: skip
        if same_shape:
            self._parent = fitted
        return self

    def _fit(self, X: Matrix) -> None:
        random_state = check_random_state(self.random_state)
        if X.shape[0] > self.max_train_samples:
            X = X[random_state.choice(X.shape[0], self.max_train_samples, replace=False)]
        history, target = self._keys(X)
        parent: DeepLogDetector | None = self.__dict__.pop("_parent", None)
        self.n_keys_ = max(int(max(history.max(), target.max())) + 1, parent.n_keys_ if parent else 0)
        history = np.minimum(history, self.n_keys_ - 1)
        order = random_state.permutation(len(target))
        seed = int(random_state.randint(0, 2**31 - 1))
        initial = _widened(list(parent.weights_), self.n_keys_) if parent is not None else None
        self.weights_, self.n_epochs_ = _train(self, history[order], target[order], seed, initial)
        self.fine_tuned_ = parent is not None

    def log_probabilities(self, X: Matrix) -> Matrix:
        """log p(next key | history keys) for every key the model knows, shape (rows, n_keys_)."""
        history, _ = self._keys(X)
        return self._log_probabilities(history)

    def _log_probabilities(self, history: np.ndarray) -> Matrix:
        """The forward pass once per distinct history (sessions repeat their paths: far fewer than the rows)."""
        distinct, inverse = np.unique(np.minimum(history, self.n_keys_ - 1), axis=0, return_inverse=True)
        return self._forward(distinct)[inverse.reshape(-1)]

    def _forward(self, known: np.ndarray) -> Matrix:
        *lstm_layers, (dense, dense_bias) = self.weights_
        sequence: list[np.ndarray] = [np.asarray(kernel_rows) for kernel_rows in lstm_layers[0][0][known.T]]
        for layer, (kernel, recurrent, bias) in enumerate(lstm_layers):
            units = recurrent.shape[0]
            state = np.zeros((len(known), units))
            cell = np.zeros((len(known), units))
            outputs = []
            for step in range(self.history):
                # The first layer's input is one-hot: its kernel product is a row lookup, done above.
                z = (sequence[step] if layer == 0 else sequence[step] @ kernel) + state @ recurrent + bias
                cell = _sigmoid(z[:, units : 2 * units]) * cell + _sigmoid(z[:, :units]) * np.tanh(
                    z[:, 2 * units : 3 * units]
                )
                state = _sigmoid(z[:, 3 * units :]) * np.tanh(cell)
                outputs.append(state)
            sequence = outputs
        logits = sequence[-1] @ dense + dense_bias
        logits -= logits.max(axis=1, keepdims=True)
        return np.asarray(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))

    def _score(self, X: Matrix) -> Vector:
        history, target = self._keys(X)
        log_p = self._log_probabilities(history)
        known = target < self.n_keys_
        scores = np.full(len(target), LOG_FLOOR)
        scores[known] = np.maximum(log_p[np.flatnonzero(known), target[known]], LOG_FLOOR)
        return scores

    def top_g_flags(self, X: Matrix) -> np.ndarray:
        """The paper's rule: True where the key that came is not among the `top_g` most probable."""
        history, target = self._keys(np.asarray(X, dtype=np.float64))
        log_p = self._log_probabilities(history)
        known = target < self.n_keys_
        rank = np.full(len(target), self.n_keys_)
        rows = np.flatnonzero(known)
        rank[rows] = (log_p[rows] > log_p[rows, target[known]][:, None]).sum(axis=1)
        return rank >= self.top_g

    def expected_keys(self, X: Matrix) -> tuple[np.ndarray, np.ndarray]:
        """The `top_g` most probable next keys of each row, most probable first, and their probabilities: what
        the paper's rule would have accepted, to set beside the key that came (shape (rows, top_g) at most)."""
        history, _ = self._keys(np.asarray(X, dtype=np.float64))
        log_p = self._log_probabilities(history)
        top = np.argsort(-log_p, axis=1, kind="stable")[:, : self.top_g]
        return top, np.exp(np.take_along_axis(log_p, top, axis=1))


def _widened(weights: list[Any], keys: int) -> list[Any]:
    """A parent's weights for `keys` classes: the one-hot input rows and the output columns of new keys are zero."""
    (kernel, recurrent, bias), *rest = weights
    *middle, (dense, dense_bias) = rest
    grown = keys - kernel.shape[0]
    return [
        (np.vstack([kernel, np.zeros((grown, kernel.shape[1]))]), recurrent, bias),
        *middle,
        (np.hstack([dense, np.zeros((dense.shape[0], grown))]), np.r_[dense_bias, np.full(grown, dense_bias.min())]),
    ]


def _train(
    detector: DeepLogDetector, history: np.ndarray, target: np.ndarray, seed: int, initial: list[Any] | None = None
) -> tuple[list[Any], int]:
    """Fit the Keras model (from `initial` weights when given); return [(kernel, recurrent, bias) per LSTM layer,
    (dense, bias)] and the epochs run."""
    keras = keras_for_training("deeplog")
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    classes = detector.n_keys_
    inputs = keras.Input((detector.history,), dtype="int32")
    sequence = layers.Lambda(lambda keys: keras.ops.one_hot(keras.ops.cast(keys, "int32"), classes))(inputs)
    for layer in range(detector.layers):
        last = layer == detector.layers - 1
        sequence = layers.LSTM(detector.hidden_units, return_sequences=not last, name=f"lstm_{layer}")(sequence)
    outputs = layers.Dense(classes, name="next_key")(sequence)
    model = keras.Model(inputs, outputs)
    if initial is not None:
        for layer in range(detector.layers):
            model.get_layer(f"lstm_{layer}").set_weights(list(initial[layer]))
        model.get_layer("next_key").set_weights(list(initial[-1]))
    model.compile(
        optimizer=keras.optimizers.Adam(detector.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    epochs = fit_with_early_stopping(keras, model, history.astype(np.int32), target.astype(np.int32), detector, 50)
    weights: list[Any] = [
        tuple(np.asarray(w, dtype=np.float64) for w in model.get_layer(f"lstm_{layer}").get_weights())
        for layer in range(detector.layers)
    ]
    weights.append(tuple(np.asarray(w, dtype=np.float64) for w in model.get_layer("next_key").get_weights()))
    return weights, epochs
