"""Keras 3 on JAX, CPU only: the one deep-learning framework the detectors train with.

Chosen for this project's machines (2 cores, no GPU): Keras 3 with `jax[cpu]` is about 400 MB installed and
has the LSTM and convolutional layers the deep detectors need, where the default PyTorch wheel pulls about
3 GB of CUDA libraries. Only training imports it (the optional `deep` extra); the detectors keep their
weights as numpy arrays and score with numpy, so a worker needs neither Keras nor JAX.
"""

from __future__ import annotations

import os
from types import ModuleType


def keras_for_training(kind: str) -> ModuleType:
    """The keras module on the JAX CPU backend, or an ImportError that says how to install it."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import keras
    except ImportError as exc:
        raise ImportError(f"the {kind} detector trains with Keras 3 on JAX: pip install 'fleetwatch[deep]'") from exc
    return keras
