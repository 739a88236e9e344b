"""Each sensor's running level per asset: how far a reading lies from the asset's own recent readings.

A model fitted once flags every reading of a later regime (a level shift, a slow drift) as anomalous, row
after row; NAB's series do that after their first 15 % (README, "Public sensor benchmarks"). The level
follows each asset instead: an exponentially weighted mean and variance of its readings with a memory of
`memory` readings (the newest weighs 1/memory), kept in the asset's state and moved by every reading the
workers score. A reading's `level` feature is its distance from the mean of the readings before it, in
their standard deviations. The weights are normalised by their sum, so a young asset's mean is its
readings' mean, not one pulled toward zero; its variance counts `PRIOR_READINGS` more readings at the
typical level variance a version learned (`learn_level_variance`: the median over the training assets of
each one's variance), so a young asset's readings are measured on the fleet's usual scale until it has
shown its own, and an established one's on its own. An asset's first reading defines its level (0).

>>> from shared.streams.metrics.windows import AssetOrder, MetricColumns
>>> by_asset = AssetOrder.of(MetricColumns.from_values(["a"] * 4, [0.0, 1.0, 2.0, 3.0], [{}] * 4))
>>> readings = np.c_[[10.0, 10.0, 10.0, 14.0], np.zeros(4)]
>>> fresh = LevelState(np.zeros(1), np.zeros((1, 2)), np.zeros((1, 2)))
>>> deviation, after = advance_levels(fresh, readings, by_asset, np.full(2, 4.0), memory=100)
>>> deviation[:, 0].round(2).tolist(), round(float(after.mean[0, 0]), 3)
([0.0, 0.0, 0.0, 2.34], 11.015)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shared.streams.metrics.windows import AssetOrder

PRIOR_READINGS = 8
"""How many readings at the learned typical level variance a level's variance counts besides its own."""

SPREAD_FLOOR = 1e-6
"""A spread is floored at this share of its level (plus this much): a constant sensor's log and deviation stay
finite (the window spreads' floor too)."""


@dataclass(frozen=True)
class LevelState:
    """Per asset: the total weight of the readings seen (0: none; it approaches 1), their weighted mean and
    variance per sensor slot."""

    weight: np.ndarray  # (assets,)
    mean: np.ndarray  # (assets, slots)
    variance: np.ndarray  # (assets, slots)


def advance_levels(
    before: LevelState, readings: np.ndarray, by_asset: AssetOrder, typical_variance: np.ndarray, memory: int
) -> tuple[np.ndarray, LevelState]:
    """Each reading's level deviation (n, slots) in the batch's order, and each asset's level after the
    batch; `readings` are in the batch's order, `before` aligned with `by_asset.assets`. Vectorized over the
    batch by `segmented_recurrence`."""
    g, within = by_asset.group, by_asset.within
    x = readings[by_asset.order]
    alpha = 1.0 / memory
    decay = 1.0 - alpha
    opening = within == 0
    # A new asset's level starts at its first reading; readings are centred on the level before the batch, so
    # the stored first-moment sum is exactly 0 and only the second moment carries over: weight · variance.
    first = x[by_asset.starts]
    centre = np.where(before.weight[:, None] > 0, before.mean, first)
    centred = x - centre[g]
    # Weighted sums of the centred readings and their squares: y_k = decay · y_{k-1} + alpha · u_k per asset,
    # an asset's first reading starting from its stored sums.
    stored_square = (before.weight[:, None] * before.variance)[g]
    sums = np.empty((len(x), 2, x.shape[1]))
    sums[:, 0] = segmented_recurrence(decay, alpha * centred, opening)
    sums[:, 1] = segmented_recurrence(
        decay, alpha * centred**2 + np.where(opening[:, None], decay * stored_square, 0.0), opening
    )
    fade = decay ** (within + 1.0)
    weight = 1.0 - (1.0 - before.weight[g]) * fade
    shift = sums[:, 0] / weight[:, None]
    mean_after = centre[g] + shift
    variance_after = np.maximum(sums[:, 1] / weight[:, None] - shift**2, 0.0)

    # The level before each reading: the stored one for an asset's first reading of the batch, else the row above.
    previous = np.arange(len(x)) - 1
    weight_before = np.where(opening, before.weight[g], weight[previous])
    mean_before = np.where(opening[:, None], centre[g], mean_after[previous])
    variance_before = np.where(opening[:, None], before.variance[g], variance_after[previous])
    readings_before = weight_before * memory  # the readings' effective count
    variance = (readings_before[:, None] * variance_before + PRIOR_READINGS * typical_variance[None, :]) / (
        readings_before[:, None] + PRIOR_READINGS
    )
    scale = np.sqrt(variance) + SPREAD_FLOOR * (1.0 + np.abs(mean_before))
    deviation = np.empty_like(x)
    deviation[by_asset.order] = (x - mean_before) / scale

    last = by_asset.starts + by_asset.counts - 1
    return deviation, LevelState(weight[last], mean_after[last], variance_after[last])


def segmented_recurrence(decay: float, inputs: np.ndarray, opening: np.ndarray) -> np.ndarray:
    """y_k = decay · y_{k-1} + inputs_k along axis 0, restarting (y_{k-1} = 0) where `opening` is set: every
    segment (an asset's readings) on its own, all at once. A prefix scan by doubling (log2 of the longest
    segment passes over the batch); the restarts multiply the previous segment's values by an exact 0, so
    no asset's readings, however extreme, leak into another's sums."""
    factor = np.where(opening, 0.0, decay)
    y = inputs.astype(np.float64, copy=True)
    span = 1
    while span < len(y) and factor[span:].any():
        y[span:] += factor[span:, None] * y[:-span]
        factor[span:] = factor[span:] * factor[:-span]
        span *= 2
    return y


def learn_level_variance(readings: np.ndarray, by_asset: AssetOrder, fallback: np.ndarray) -> np.ndarray:
    """Each slot's median, over the assets of a history with at least two readings of it, of the variance of
    those readings (the prior of a young asset's level); `fallback` where no asset has two. `readings` hold NaN
    where a record lacks a sensor: an asset's carried-forward values would count as a constant sensor."""
    x = readings[by_asset.order]
    real = ~np.isnan(x)
    counts = np.add.reduceat(real.astype(np.float64), by_asset.starts, axis=0)
    sums = np.add.reduceat(np.where(real, x, 0.0), by_asset.starts, axis=0)
    means = sums / np.maximum(counts, 1.0)
    squares = np.add.reduceat(np.where(real, (x - means[by_asset.group]) ** 2, 0.0), by_asset.starts, axis=0)
    variances = np.where(counts >= 2, squares / np.maximum(counts, 1.0), np.nan)
    prior = fallback.astype(np.float64, copy=True)
    for slot in range(x.shape[1]):  # a loop over the 16 slots, each a median over assets
        known = variances[:, slot][~np.isnan(variances[:, slot])]
        if known.size:
            prior[slot] = np.median(known)
    return prior
