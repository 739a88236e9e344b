"""Automatic thresholds: each detector's operating point, computed from held-out normal data.

Every method reads the residual `r = -score_samples` of the held-out normal rows (higher = more
anomalous, like seed 003's residuals) and yields a residual threshold `t`: a row is flagged when its
residual exceeds `t`. It is stored as an offset on `score_samples`, `offset = -t`, so a detector
flags a row (predict -1) exactly when `score_samples < offset`. With `n` held-out residuals:

- `mean_k_std`: `mean(r) + k * std(r)`, population standard deviation, `k = 6` by default.
- `max`: `max(r)`, the most lenient threshold that still sits on the data: it flags no held-out row.
- `min`: `min(r)`, the strictest: it flags every held-out row but the lowest-residual one(s). A
  bound for the range a person picks from, not an operating point.
- `moving_average`: `m_i` is the mean of the `w` residuals up to row `i` in held-out (time) order,
  and the first full window's mean for the rows before it; `t = max_i m_i + max_i |r_i - m_i|`:
  the highest local level the residual reached plus the widest the raw residual strayed from its
  local level. Drift in the held-out period raises the level, not the band. `t >= max(r)`, so it
  flags no held-out row but keeps a margin the size of the noise; with `w = 1` it equals `max`.
- `quantile`: the `q`-quantile of `r` (linear interpolation), `q = 0.95`: flags about `1 - q`.
- `target_fpr`: the smallest of the held-out residuals whose held-out false-positive rate (share of
  rows with a residual strictly above it) is at most `fpr`: the `(m + 1)`-th largest residual with
  `m = floor(fpr * n)` when residuals are distinct. A guarantee on held-out data, where `quantile`
  is an interpolated estimate.
- `fleet_budget`: the fleet alerts when ANY detector flags, so per-detector rates add up. Each
  detector's threshold is its `(m + 1)`-th largest residual for one common rank `m`, the largest `m`
  at which the share of held-out rows flagged by at least one detector is at most the budget.
  This is the default active method.

>>> import numpy as np
>>> scores = -np.arange(1.0, 101.0)[:, None]  # residuals 1..100 of one detector
>>> (thresholds,) = compute_thresholds(scores, ThresholdConfig(target_fpr=0.05))
>>> thresholds.offset(ThresholdMethod.QUANTILE), thresholds.offset(ThresholdMethod.TARGET_FPR)
(-95.05, -95.0)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


class ThresholdMethod(enum.StrEnum):
    MEAN_K_STD = "mean_k_std"
    MIN = "min"
    MAX = "max"
    MOVING_AVERAGE = "moving_average"
    QUANTILE = "quantile"
    TARGET_FPR = "target_fpr"
    FLEET_BUDGET = "fleet_budget"


DEFAULT_ACTIVE_METHOD = ThresholdMethod.FLEET_BUDGET


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdConfig:
    """The knobs of the threshold methods; stored beside the thresholds they produced."""

    std_multiplier: float = 6.0
    moving_average_window: int = 50
    quantile: float = 0.95
    target_fpr: float = 0.01
    fleet_fpr_budget: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.std_multiplier) and self.std_multiplier >= 0.0):
            raise ValueError(f"std_multiplier must be a finite number >= 0, got {self.std_multiplier!r}")
        if isinstance(self.moving_average_window, bool) or not (
            isinstance(self.moving_average_window, int) and self.moving_average_window >= 1
        ):
            raise ValueError(f"moving_average_window must be an int >= 1, got {self.moving_average_window!r}")
        for name in ("quantile", "target_fpr", "fleet_fpr_budget"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdConfig:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class DetectorThresholds:
    """One detector's offset on `score_samples` for every method, from `n_held_out` normal rows."""

    offsets: Mapping[ThresholdMethod, float]
    n_held_out: int
    config: ThresholdConfig

    def __post_init__(self) -> None:
        offsets = {ThresholdMethod(method): float(value) for method, value in self.offsets.items()}
        if missing := sorted(set(ThresholdMethod) - set(offsets)):
            raise ValueError(f"thresholds are missing for {', '.join(missing)}")
        if not all(math.isfinite(value) for value in offsets.values()):
            raise ValueError(f"thresholds must be finite, got {offsets}")
        object.__setattr__(self, "offsets", offsets)

    def offset(self, method: ThresholdMethod = DEFAULT_ACTIVE_METHOD) -> float:
        """The offset to give `Detector.set_offset` when `method` is the active one."""
        return self.offsets[method]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values for the model manifest."""
        return {
            "offsets": {method.value: value for method, value in self.offsets.items()},
            "n_held_out": self.n_held_out,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorThresholds:
        return cls(
            offsets={ThresholdMethod(method): value for method, value in data["offsets"].items()},
            n_held_out=int(data["n_held_out"]),
            config=ThresholdConfig.from_dict(data["config"]),
        )


def compute_thresholds(
    normal_scores: ArrayLike, config: ThresholdConfig = ThresholdConfig()
) -> tuple[DetectorThresholds, ...]:
    """Every method's threshold for each detector of a fleet, from held-out normal data.

    `normal_scores` is `score_samples` of the held-out normal rows, in held-out (time) order, one
    column per detector, shape (n_rows, n_detectors); the result has one entry per column.
    """
    residuals = -_score_matrix(normal_scores)
    fleet_budget = _common_rank_thresholds(residuals, config.fleet_fpr_budget)
    return tuple(
        DetectorThresholds(
            offsets={method: -threshold for method, threshold in _residual_thresholds(column, config).items()}
            | {ThresholdMethod.FLEET_BUDGET: -fleet_budget[j]},
            n_held_out=residuals.shape[0],
            config=config,
        )
        for j, column in enumerate(residuals.T)
    )


def union_false_positive_rate(normal_scores: ArrayLike, offsets: ArrayLike) -> float:
    """Share of normal rows that at least one detector flags (`score < offset` in any column)."""
    scores = _score_matrix(normal_scores)
    return float(np.mean(np.any(scores < np.asarray(offsets, dtype=np.float64), axis=1)))


def _score_matrix(normal_scores: ArrayLike) -> NDArray[np.float64]:
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 1:
        raise ValueError(f"expected scores of shape (n_rows >= 2, n_detectors >= 1), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores


def _residual_thresholds(residuals: NDArray[np.float64], config: ThresholdConfig) -> dict[ThresholdMethod, float]:
    """Every single-detector method's threshold on one detector's residuals."""
    return {
        ThresholdMethod.MEAN_K_STD: float(residuals.mean() + config.std_multiplier * residuals.std()),
        ThresholdMethod.MIN: float(residuals.min()),
        ThresholdMethod.MAX: float(residuals.max()),
        ThresholdMethod.MOVING_AVERAGE: _moving_average_threshold(residuals, config.moving_average_window),
        ThresholdMethod.QUANTILE: float(np.quantile(residuals, config.quantile)),
        ThresholdMethod.TARGET_FPR: float(_common_rank_thresholds(residuals[:, None], config.target_fpr)[0]),
    }


def _moving_average_threshold(residuals: NDArray[np.float64], window: int) -> float:
    """Highest trailing moving average plus the largest deviation of the raw residual from it."""
    window = min(window, residuals.size)  # a window longer than the series is the whole series
    full_windows = np.convolve(residuals, np.full(window, 1.0 / window), mode="valid")
    moving_average = np.concatenate([np.full(window - 1, full_windows[0]), full_windows])
    envelope = moving_average.max() + np.abs(residuals - moving_average).max()
    # Exactly, the envelope is >= max(r); rounding of the averages can leave it an ulp below.
    return float(max(envelope, residuals.max()))


def _common_rank_thresholds(residuals: NDArray[np.float64], fpr_budget: float) -> NDArray[np.float64]:
    """Per-column thresholds at one common rank, the loosest whose union false-positive rate fits.

    Column j's threshold at rank m is its (m + 1)-th largest residual, which flags at most m rows of
    that column. The union rate only grows with m and is 0 at m = 0, so bisection over m finds the
    largest rank within the budget in O(n * k * log n).
    """
    n_rows = residuals.shape[0]
    descending = -np.sort(-residuals, axis=0)

    def fits_budget(rank: int) -> bool:
        flagged_rows = np.count_nonzero(np.any(residuals > descending[rank], axis=1))
        return flagged_rows / n_rows <= fpr_budget

    lowest, highest = 0, n_rows - 1
    while lowest < highest:
        middle = (lowest + highest + 1) // 2
        if fits_budget(middle):
            lowest = middle
        else:
            highest = middle - 1
    return descending[lowest]
