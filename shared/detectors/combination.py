"""The fleet's combined score: each detector normalized against its own calibration scores, then weighted.

Detectors score on unrelated scales, so each one's residual `r = -score_samples` is first mapped to
its surprise on held-out calibration rows, `-log10 P_cal(R >= r)`: 0 for the most normal calibration
row, 1 for the top 10 %, 3 for the top 0.1 %. The map is stored as the residual quantiles at
`GRID_POINTS` tail probabilities from 1 down to `1 / n_calibration` (log-spaced, so the tail that
alerts is resolved finely) and interpolated; beyond the calibration range it keeps growing slowly
(the log of the distance in units of the detector's upper half-spread), so the most extreme rows stay
ranked. The combined score is minus the weighted sum of the surprises (with specialists, below: the
larger of that sum and each specialist's surprise): higher = more normal, like every detector, and the
alert rule is one threshold on it at the fleet's false-positive budget (with labels and a precision floor,
the lowest threshold at which the labelled rows' precision holds: `floor_threshold`).

Weights come from agreement with the consensus (the "ensemble centrality" family of internal
model-selection criteria, Ma, Zhao and Akoglu 2023): a member's weight is the Pearson correlation of
its calibration surprises with the mean surprise of the other members, set to 0 below 0.1, so a detector
that ranks rows unlike all the others (noise, or a signal no one else confirms) is dropped, and the
members that share the dominant signal share the vote. It needs no labels and no refit.

A *specialist* (a detector on one piece of evidence, such as an amount far above the user's own) sees
one kind of anomaly that the others miss, so disagreeing with the consensus is its point, and a vote
would drown it: it is left out of the vote and alerts alone. The combined surprise is the larger of
the members' weighted sum and each specialist's own surprise (Tippett's rule for the specialists,
Fisher's-style sum for the members), and the one offset still meets the budget on calibration rows.
The voting members' weights sum to 1; a specialist's weight is 1 or 0 (on or off), not a share. Code
from before specialists would add a specialist into the sum: upgrade the workers before the trainer.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> signal = rng.normal(size=2000)
>>> calibration = np.column_stack([-signal, -2 * signal - 1, rng.normal(size=2000)])  # the third is noise
>>> combination = fit_combination(calibration, ["a", "b", "noise"], fpr_budget=0.01)
>>> {name: round(weight, 2) for name, weight in combination.weights.items()}
{'a': 0.5, 'b': 0.5, 'noise': 0.0}
>>> float(np.mean(combination.score_samples(calibration) < combination.offset))
0.01
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

GRID_POINTS = 128
"""Tail probabilities per detector at which the calibration residual quantile is stored."""

CONSENSUS_AGREEMENT = "consensus_agreement"
LABELS_AT_BUDGET = "labels_precision_at_budget"
LABELS_AT_PRECISION_FLOOR = "labels_recall_at_precision_floor"
CRITERIA = {
    CONSENSUS_AGREEMENT: "voting weights by agreement with the consensus, threshold at fleet_fpr_budget",
    LABELS_AT_BUDGET: "members chosen by the labels: the most anomalies caught at fleet_fpr_budget",
    LABELS_AT_PRECISION_FLOOR: "members and threshold chosen by the labels: the most caught at precision_floor",
}
"""How a combination's weights and offset were chosen (`ScoreCombination.criterion`), for the training report."""

MIN_AGREEMENT = 0.1
"""A member whose agreement with the consensus is below this gets weight 0 (chance correlations are dropped)."""


@dataclass(frozen=True, slots=True)
class ScoreCombination:
    """Per member: residual quantiles at `surprise` levels (-log10 tail probability) and a weight; one offset;
    which members are specialists (their weight is 1 or 0: on or off).

    `names` is the member order of the score matrices given to `score_samples` (the manifest's order).
    """

    names: tuple[str, ...]
    weights: Mapping[str, float]
    surprise: NDArray[np.float64]  # (GRID_POINTS,), increasing from 0
    quantiles: NDArray[np.float64]  # (n_members, GRID_POINTS) residual at each surprise level, non-decreasing
    offset: float
    criterion: str = CONSENSUS_AGREEMENT
    specialists: frozenset[str] = frozenset()

    def surprises(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Each member's calibration surprise of each row, shape (n_rows, n_members)."""
        residuals = -np.asarray(scores, dtype=np.float64)
        out = np.empty_like(residuals)
        for j, grid in enumerate(self.quantiles):  # a loop over members, vectorised over the batch
            out[:, j] = _surprise_of(residuals[:, j], grid, self.surprise)
        return out

    def score_samples(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Minus the combined surprise; `scores` are the members' `score_samples`, columns in `names` order."""
        weights = np.array([self.weights[name] for name in self.names])
        return -combined_surprise(self.surprises(scores), weights, self.specialist_mask)

    @property
    def specialist_mask(self) -> NDArray[np.bool_]:
        return np.array([name in self.specialists for name in self.names], dtype=bool)

    def reweighted(self, weights: Mapping[str, float]) -> ScoreCombination:
        """The same normalization with other weights (normalized as the combined score reads them)."""
        return replace(self, weights=normalized_weights(weights, self.names, self.specialist_mask))

    def at_budget(self, calibration_scores: ArrayLike, fpr_budget: float) -> ScoreCombination:
        """This combination with the offset that meets `fpr_budget` on `calibration_scores`."""
        return replace(self, offset=budget_offset(self.score_samples(calibration_scores), fpr_budget))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values for the model manifest."""
        return {
            "criterion": self.criterion,
            "weights": dict(self.weights),
            "specialists": sorted(self.specialists),
            "offset": float(self.offset),
            "surprise": self.surprise.tolist(),
            "quantiles": {name: grid.tolist() for name, grid in zip(self.names, self.quantiles, strict=True)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreCombination:
        names = tuple(data["quantiles"])
        return cls(
            names=names,
            weights={name: float(data["weights"][name]) for name in names},
            surprise=np.asarray(data["surprise"], dtype=np.float64),
            quantiles=np.asarray([data["quantiles"][name] for name in names], dtype=np.float64),
            offset=float(data["offset"]),
            criterion=str(data.get("criterion", CONSENSUS_AGREEMENT)),
            specialists=frozenset(data.get("specialists", ())),
        )


def fit_combination(
    calibration_scores: ArrayLike, names: Sequence[str], fpr_budget: float, specialists: Collection[str] = ()
) -> ScoreCombination:
    """Normalize every member on its calibration scores (n_rows, n_members), weigh the members other than the
    `specialists` by consensus, place the offset."""
    scores = np.asarray(calibration_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(names) or scores.shape[0] < 2:
        raise ValueError(f"expected calibration scores of shape (n_rows >= 2, {len(names)}), got {scores.shape}")
    if unknown := set(specialists) - set(names):
        raise ValueError(f"specialists {sorted(unknown)} are not among the members {list(names)}")
    n_rows = scores.shape[0]
    surprise = np.linspace(0.0, np.log10(n_rows), GRID_POINTS)
    quantiles = np.quantile(-scores, 1.0 - 10.0**-surprise, axis=0).T  # (n_members, GRID_POINTS)
    unweighted = ScoreCombination(
        tuple(names), dict.fromkeys(names, 1.0), surprise, quantiles, 0.0, specialists=frozenset(specialists)
    )
    voting = np.flatnonzero(~unweighted.specialist_mask)
    weights = dict.fromkeys(specialists, 1.0)
    if voting.size:
        weights |= consensus_weights(unweighted.surprises(scores)[:, voting], [names[j] for j in voting.tolist()])
    return unweighted.reweighted(weights).at_budget(scores, fpr_budget)


def combined_surprise(
    surprises: NDArray[np.float64], weights: NDArray[np.float64], specialist: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """The voting members' weighted surprise sum, raised to a specialist's own surprise where that is larger.

    `weights` and `specialist` are per column of `surprises`; a member or specialist of weight 0 takes no
    part. An elementwise sum over members (no BLAS product), so a row's value does not depend on its batch.
    """
    voting = np.flatnonzero((weights > 0.0) & ~specialist)
    total = np.zeros(surprises.shape[0]) if voting.size else np.full(surprises.shape[0], -np.inf)
    for j in voting:
        total += weights[j] * surprises[:, j]
    for j in np.flatnonzero((weights > 0.0) & specialist):
        total = np.maximum(total, surprises[:, j])
    return total


def consensus_weights(surprises: NDArray[np.float64], names: Sequence[str]) -> dict[str, float]:
    """Each member's correlation with the mean of the others, 0 under `MIN_AGREEMENT` (all equal if none agrees)."""
    if len(names) == 1:
        return {names[0]: 1.0}
    agreement = {}
    for j, name in enumerate(names):
        others = np.delete(surprises, j, axis=1).mean(axis=1)
        member = surprises[:, j]
        spread = member.std() * others.std()
        correlation = float(np.mean((member - member.mean()) * (others - others.mean())) / spread) if spread else 0.0
        agreement[name] = correlation if correlation >= MIN_AGREEMENT else 0.0
    return agreement if any(agreement.values()) else dict.fromkeys(names, 1.0)


def budget_offset(combined_scores: NDArray[np.float64], fpr_budget: float) -> float:
    """The offset under which at most `fpr_budget` of these (normal) rows fall: `score < offset` alerts."""
    ascending = np.sort(combined_scores)
    allowed = int(np.floor(fpr_budget * ascending.size))
    return float(ascending[min(allowed, ascending.size - 1)])


PRECISION_CONFIDENCE_Z = 1.645
"""One-sided 95 % Wilson bound: a floor met only by the luck of a few labelled rows does not count."""


def floor_threshold(
    normal_surprise: NDArray[np.float64], anomalous_surprise: NDArray[np.float64], floor: float
) -> tuple[int, int, float] | None:
    """(caught, false alarms, threshold) of the lowest combined-surprise threshold at which the precision's
    lower confidence bound on these labelled rows is at least `floor`; None when no threshold reaches it.

    `surprise > threshold` alerts (the offset is minus the threshold). Candidates lie just under each finite
    anomalous surprise, halfway to the next lower finite row, so that the threshold separates the rows it was
    measured on however they are rounded later; an infinite surprise is caught by any finite threshold.
    """
    ascending_anomalous, ascending_normal = np.sort(anomalous_surprise), np.sort(normal_surprise)
    candidates = np.unique(ascending_anomalous[np.isfinite(ascending_anomalous)])
    caught = ascending_anomalous.size - np.searchsorted(ascending_anomalous, candidates, side="left")
    false_alarms = ascending_normal.size - np.searchsorted(ascending_normal, candidates, side="left")
    feasible = np.flatnonzero(_wilson_lower_bound(caught, caught + false_alarms) >= floor)
    if not feasible.size:
        return None
    lowest = feasible[0]  # candidates ascend, so the first feasible one catches the most
    rows = np.concatenate([ascending_anomalous, ascending_normal])
    below = rows[np.isfinite(rows) & (rows < candidates[lowest])]
    next_lower = below.max() if below.size else candidates[lowest] - 1.0
    return int(caught[lowest]), int(false_alarms[lowest]), float((candidates[lowest] + next_lower) / 2)


def _wilson_lower_bound(successes: NDArray[np.int64], trials: NDArray[np.int64]) -> NDArray[np.float64]:
    """Wilson's score interval's lower end for success shares, at `PRECISION_CONFIDENCE_Z`."""
    z2 = PRECISION_CONFIDENCE_Z**2
    share = successes / trials
    centre = share + z2 / (2 * trials)
    spread = PRECISION_CONFIDENCE_Z * np.sqrt(share * (1 - share) / trials + z2 / (4 * trials**2))
    return (centre - spread) / (1 + z2 / trials)


def normalized_weights(
    weights: Mapping[str, float], names: Sequence[str], specialist: NDArray[np.bool_]
) -> dict[str, float]:
    """Voting members' weights summing to 1 and each specialist's 1 or 0 (it is on or off); all on if none is."""
    values = np.array([max(0.0, float(weights.get(name, 0.0))) for name in names])
    if values.sum() <= 0.0:
        values = np.ones(len(names))
    voting_total = values[~specialist].sum()
    if voting_total > 0.0:
        values[~specialist] /= voting_total
    values[specialist] = values[specialist] > 0.0
    return {name: float(value) for name, value in zip(names, values, strict=True)}


def _surprise_of(
    residuals: NDArray[np.float64], grid: NDArray[np.float64], surprise: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Interpolated surprise, extended past both ends of the grid by the log of the distance in half-spreads."""
    lowest, median, highest = grid[0], grid[np.searchsorted(surprise, np.log10(2.0))], grid[-1]
    unit = max(highest - median, median - lowest, 1e-12)
    inside = np.interp(residuals, grid, surprise)
    above = surprise[-1] + np.log1p(np.maximum(residuals - highest, 0.0) / unit)
    below = -np.log1p(np.maximum(lowest - residuals, 0.0) / unit)
    return np.where(residuals > highest, above, np.where(residuals < lowest, below, inside))
