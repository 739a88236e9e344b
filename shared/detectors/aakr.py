"""Auto-associative kernel regression (seed 003's AAKR model): a row rebuilt as the kernel-weighted mean of
remembered normal rows; its residual is how far it is from that reconstruction.

The memory matrix is a sample of at most `memory_size` training rows. A row's weights over the memory
rows are a Gaussian kernel of its distance to each, `exp(-d^2 / (2 h^2))`, with the bandwidth `h` given
or, by default, the median distance of a memory row to its 5th nearest other memory row (a local scale
of normal data). A normal row is rebuilt from its close neighbours and keeps a small residual; a row
off the normal relations is pulled back onto them, and the pull is its residual. Scoring is vectorized:
one distance product and one weighted sum per fixed block of rows (block x memory, bounded memory), in
single precision.

>>> import numpy as np
>>> from shared.detectors.aakr import AAKRDetector
>>> rng = np.random.default_rng(0)
>>> t = rng.uniform(-2, 2, size=(500, 1))
>>> X = np.hstack([t, 2 * t, t**2]) + 0.05 * rng.normal(size=(500, 3))
>>> AAKRDetector(random_state=0).fit(X).predict([[1.0, 2.0, 1.0], [1.0, -2.0, 1.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from shared.detectors.base import Matrix
from shared.detectors.reconstruction import ReconstructionDetector

FLOAT32_SAFE = 1e15
"""A scaled feature beyond this is clipped for the kernel: 4,096 squares of it still fit in a float32."""

BANDWIDTH_NEIGHBOUR = 5
"""The default bandwidth is the median distance of a memory row to this nearest other memory row."""


class AAKRDetector(ReconstructionDetector):
    """`memory_size` rows remembered; `bandwidth` of the Gaussian kernel (None: the median-neighbour rule)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **ReconstructionDetector._parameter_constraints,
        "memory_size": [Interval(Integral, 2, None, closed="left")],
        "bandwidth": [Interval(Real, 0.0, None, closed="neither"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        memory_size: int = 2_000,
        bandwidth: float | None = None,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.memory_size = memory_size
        self.bandwidth = bandwidth
        self.contamination = contamination
        self.random_state = random_state

    def _fit_reconstruction(self, X: Matrix) -> None:
        if X.shape[0] > self.memory_size:
            X = X[check_random_state(self.random_state).choice(X.shape[0], self.memory_size, replace=False)]
        self.bandwidth_ = self.bandwidth or _median_neighbour_distance(X)
        # Kept in single precision, as the kernel runs (see `_reconstruct`), so scoring casts only the rows.
        memory = np.clip(X, -FLOAT32_SAFE, FLOAT32_SAFE)
        self.memory_, self.memory_norms_ = memory.astype(np.float32), np.sum(memory**2, axis=1).astype(np.float32)

    def _reconstruct(self, block: Matrix) -> Matrix:
        # In float32: the kernel over the memory is the sensor stream's largest scoring cost, and single precision
        # runs it about twice as fast while moving a residual by about 1e-8 of itself. Rows are clipped to where
        # their squared distances stay finite in float32; the residual still measures the unclipped row.
        rows = np.clip(block, -FLOAT32_SAFE, FLOAT32_SAFE).astype(np.float32)
        squared = np.sum(rows * rows, axis=1)[:, None] + self.memory_norms_[None, :]
        logits = np.maximum(squared - 2.0 * (rows @ self.memory_.T), 0.0) * np.float32(-0.5 / self.bandwidth_**2)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))  # the nearest memory row weighs 1
        return ((weights @ self.memory_) / weights.sum(axis=1, keepdims=True)).astype(np.float64)


def _median_neighbour_distance(memory: Matrix) -> float:
    """The median over memory rows of the distance to their `BANDWIDTH_NEIGHBOUR`-th nearest other row."""
    distances = np.sqrt(squared_distances(memory, memory))
    np.fill_diagonal(distances, np.inf)
    k = min(BANDWIDTH_NEIGHBOUR, len(memory) - 1)
    median = float(np.median(np.partition(distances, k - 1, axis=1)[:, k - 1]))
    return median if median > 1e-9 else 1.0  # identical memory rows: any scale rebuilds them exactly


def squared_distances(rows: Matrix, memory: Matrix) -> Matrix:
    """Each row's squared Euclidean distance to each memory row, in float64."""
    products = rows @ memory.T
    return np.maximum(np.sum(rows**2, axis=1)[:, None] + np.sum(memory**2, axis=1)[None, :] - 2.0 * products, 0.0)
