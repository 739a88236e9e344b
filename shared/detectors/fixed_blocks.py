"""Row-wise computations that give each row the same bits whatever rows share its batch.

BLAS picks its kernels and its split of the work by the shape of the whole matrix, so a row's product
can differ in its last bits between a worker's micro-batch, a batch-mode file and a Spark partition.
Cutting the rows into zero-padded blocks of one fixed shape gives BLAS the same shape every time, so a
row's result depends on that row only, at BLAS speed (einsum, the other way to a fixed order, is
2-3 times slower at these widths).

>>> import numpy as np
>>> weights = np.random.default_rng(0).normal(size=(5, 3))
>>> rows = np.random.default_rng(1).normal(size=(300, 5))
>>> whole = in_fixed_blocks(lambda block: block @ weights, rows)
>>> bool(np.array_equal(whole[7:9], in_fixed_blocks(lambda block: block @ weights, rows[7:9])))
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK_ROWS = 256
"""Rows per block: small enough that a short batch wastes little padding, large enough for BLAS."""


def in_fixed_blocks(compute: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """`compute` (row-wise: output row i depends on input row i only) over blocks of exactly BLOCK_ROWS rows."""
    n = len(rows)
    padded = np.zeros((-(-n // BLOCK_ROWS) * BLOCK_ROWS, *rows.shape[1:]), dtype=rows.dtype)
    padded[:n] = rows
    results = [compute(padded[start : start + BLOCK_ROWS]) for start in range(0, len(padded), BLOCK_ROWS)]
    return np.concatenate(results)[:n] if results else compute(padded[:0])
