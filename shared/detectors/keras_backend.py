"""Keras 3 on JAX, CPU only: the one deep-learning framework the detectors train with.

Chosen for this project's machines (2 cores, no GPU): Keras 3 with `jax[cpu]` is about 400 MB installed and
has the LSTM and convolutional layers the deep detectors need, where the default PyTorch wheel pulls about
3 GB of CUDA libraries. Only training imports it (the optional `deep` extra); the detectors keep their
weights as numpy arrays and score with numpy, so a worker needs neither Keras nor JAX.
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from types import ModuleType
from typing import Any, Protocol

import structlog
from sklearn.utils._param_validation import Interval

from shared.logs import get_logger

log = get_logger("fleetwatch.detectors")


def keras_for_training(kind: str) -> ModuleType:
    """The keras module on the JAX CPU backend, or an ImportError that says how to install it."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import keras
    except ImportError as exc:
        raise ImportError(f"the {kind} detector trains with Keras 3 on JAX: pip install 'fleetwatch[deep]'") from exc
    return keras


TRAINING_CONSTRAINTS: dict[str, list[Any]] = {
    "epochs": [Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "patience": [Interval(Integral, 1, None, closed="left")],
    "learning_rate": [Interval(Real, 0.0, None, closed="neither")],
    "max_train_samples": [Interval(Integral, 2, None, closed="left")],
    "random_state": ["random_state"],
}
"""The training parameters every deep detector takes, checked alike."""

VALIDATION_FRACTION = 0.1
"""Share of the training rows early stopping watches (the latest of the shuffled rows)."""


class TrainingSchedule(Protocol):
    kind_name: str
    epochs: int
    batch_size: int
    patience: int


def fit_with_early_stopping(
    keras: ModuleType, model: Any, inputs: Any, targets: Any, schedule: TrainingSchedule, min_rows: int = 20
) -> int:
    """Fit `model`, watching a held-out tenth when there are at least `min_rows` rows, keeping the best epoch's
    weights; each epoch's loss is logged once the process configured its logs (the progress of a long training
    round; a library caller's stdout stays quiet). Returns the epochs run."""
    validated = len(targets) >= min_rows
    monitor = "val_loss" if validated else "loss"

    def progress(epoch: int, logs: dict[str, float] | None) -> None:
        if structlog.is_configured():
            log.info("deep detector epoch", kind=schedule.kind_name, epoch=epoch + 1, of=schedule.epochs,
                     **{name: round(float(value), 6) for name, value in (logs or {}).items()})  # fmt: skip

    fitted = model.fit(
        inputs, targets, epochs=schedule.epochs, batch_size=schedule.batch_size, shuffle=True, verbose=0,
        validation_split=VALIDATION_FRACTION if validated else 0.0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor=monitor, patience=schedule.patience, restore_best_weights=True),
            keras.callbacks.LambdaCallback(on_epoch_end=progress),
        ],
    )  # fmt: skip
    return len(fitted.history["loss"])
