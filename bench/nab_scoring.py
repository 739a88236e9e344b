"""The Numenta Anomaly Benchmark's scoring rules (numenta/NAB, MIT licence), re-implemented from its
`nab/sweeper.py`, `scorer.py`, `optimizer.py` and `runner.normalize`, vectorised over a whole corpus.

NAB scores a detector that gives every row of a file an anomaly score in [0, 1]. A threshold turns
scores into detections (a row is detected when its score is at least the threshold). Rows of the
probationary period (the first 15 % of a file, at most 750 rows) are not scored. Every labelled
window is worth, under a cost profile (tp, fp, fn weights):

- its earliest detection's credit `tp · σ(p) / σ(-1)`, with `σ(p) = 2 / (1 + e^(5p)) - 1` the scaled
  sigmoid and `p = -(right - i + 1) / width` the row's place in the window (-1 at its left edge, near
  0 at its right edge), so an early detection earns almost `tp`, a late one little;
- `-fn` when no row of it is detected.

Every detected row outside a window costs `fp · σ(p)`, negative: `σ = -1` before the file's first
window and past three window widths after the previous window's right edge, and milder just after
a window (`p = (i - right) / (width - 1)`). A file's score is the sum; the corpus score the sum over
files. The threshold is optimised per profile over the whole corpus (every distinct score is tried),
and the result normalised to 100 · (score - null) / (perfect - null): the null detector (a constant
score, so it detects everything or nothing; on NAB's corpus nothing, every window missed) gives 0,
detecting each window at its left edge and nothing else gives 100 (`perfect = tp · windows`, counting
every labelled window).

Three rows, a window over rows 1-2 (so nothing is probationary in so short a file), standard
profile: detecting its first row scores σ(-1)/σ(-1) = 1, as the perfect detector does, so it normalises
to 100 (the null detector's best here is to detect all three rows: 1 - 0.11 for the early false positive).

>>> labelled = LabelledFile("toy.csv", n_rows=3, windows=((1, 2),))
>>> best = optimize_threshold([labelled], [np.array([0.1, 0.9, 0.2])], PROFILES["standard"])
>>> best.threshold, round(best.score, 6)
(0.9, 1.0)
>>> standard = PROFILES["standard"]
>>> round(normalized_score(best.score, null_score([labelled], standard), perfect_score([labelled], standard)), 9)
100.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
from numpy.typing import NDArray

from shared.errors import FleetwatchError

Vector = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Weights of a true positive, a false positive and a false negative (NAB's `config/profiles.json`)."""

    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: Mapping[str, CostProfile] = {
    "standard": CostProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostProfile(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": CostProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}
"""NAB's three application profiles; `read_profiles` reads them from a NAB checkout to check they still agree."""

PROBATION_SHARE = 0.15
PROBATION_MAX_ROWS = 750  # NAB: 15 % of 5,000 rows
NOTHING_DETECTED = 1.1
"""The threshold NAB reports when detecting nothing is best (scores should lie in [0, 1]; a few published
result files go beyond, and then the first threshold above every score stands for it)."""


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are not scored (and that a detector may learn from)."""
    return min(math.floor(PROBATION_SHARE * n_rows), PROBATION_MAX_ROWS)


def scaled_sigmoid(position: Vector) -> Vector:
    """NAB's credit curve: ≈ 1 at -1 (a window's left edge), 0 at 0, ≈ -1 at +1, exactly -1 beyond 3."""
    position = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        curve = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position > 3.0, -1.0, curve)


MAX_TP_CREDIT = float(scaled_sigmoid(np.array(-1.0)))


@dataclass(frozen=True, slots=True)
class LabelledFile:
    """One data file: its length and its labelled windows as inclusive row spans, in time order."""

    name: str
    n_rows: int
    windows: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        previous_right = -1
        for left, right in self.windows:
            if not previous_right < left <= right < self.n_rows:
                raise FleetwatchError(f"{self.name}: windows must be ordered, disjoint row spans, got {self.windows}")
            if right == left:
                raise FleetwatchError(f"{self.name}: a one-row window has no width to measure positions by")
            previous_right = right

    def window_of_rows(self) -> NDArray[np.int64]:
        """Each row's window number in this file, -1 outside every window."""
        window = np.full(self.n_rows, -1, dtype=np.int64)
        for number, (left, right) in enumerate(self.windows):
            window[left : right + 1] = number
        return window

    def unweighted_credit(self) -> Vector:
        """σ of each row's position: in a window as a detection of it, outside as a false positive."""
        rows = np.arange(self.n_rows)
        credit = np.full(self.n_rows, -1.0)  # before the first window: as far as can be from any window
        for left, right in self.windows:
            width = right - left + 1
            credit[left : right + 1] = scaled_sigmoid(-(right - rows[left : right + 1] + 1) / width)
            after = rows > right  # overwritten by the next window's own rows and what follows it
            credit[after] = scaled_sigmoid((rows[after] - right) / (width - 1))
        return credit


@dataclass(frozen=True, slots=True)
class ThresholdScore:
    """A threshold and the corpus's raw NAB score with it, with NAB's row counts (scored rows only)."""

    threshold: float
    score: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True, slots=True)
class _ScoredRows:
    """The scorable rows of a corpus, concatenated: anomaly score, window id over the corpus (-1 outside), σ."""

    scores: Vector
    window: NDArray[np.int64]
    credit: Vector
    file_index: NDArray[np.int64]
    n_windows: int  # windows with at least one scorable row; each starts at -fn

    @classmethod
    def of(cls, files: Sequence[LabelledFile], scores: Sequence[Vector]) -> _ScoredRows:
        if len(files) != len(scores):
            raise FleetwatchError(f"{len(files)} labelled files but {len(scores)} score series")
        parts: list[tuple[Vector, NDArray[np.int64], Vector, NDArray[np.int64]]] = []
        next_window = 0
        for index, (labelled, file_scores) in enumerate(zip(files, scores, strict=True)):
            file_scores = np.asarray(file_scores, dtype=np.float64)
            if file_scores.shape != (labelled.n_rows,):
                raise FleetwatchError(f"{labelled.name}: {file_scores.shape[0]} scores for {labelled.n_rows} rows")
            if not np.all(np.isfinite(file_scores)):
                raise FleetwatchError(f"{labelled.name}: anomaly scores must be finite")
            keep = slice(probation_length(labelled.n_rows), None)
            local = labelled.window_of_rows()[keep]
            present, renumbered = np.unique(local[local >= 0], return_inverse=True)
            window = np.full(local.shape, -1, dtype=np.int64)
            window[local >= 0] = renumbered + next_window
            next_window += len(present)
            rows = file_scores[keep]
            parts.append((rows, window, labelled.unweighted_credit()[keep], np.full(rows.shape, index)))
        return cls(
            scores=np.concatenate([p[0] for p in parts]),
            window=np.concatenate([p[1] for p in parts]),
            credit=np.concatenate([p[2] for p in parts]),
            file_index=np.concatenate([p[3] for p in parts]),
            n_windows=next_window,
        )

    def weighted(self, profile: CostProfile) -> Vector:
        inside = self.window >= 0
        return np.where(inside, self.credit * profile.tp_weight / MAX_TP_CREDIT, self.credit * profile.fp_weight)


def sweep(files: Sequence[LabelledFile], scores: Sequence[Vector], profile: CostProfile) -> list[ThresholdScore]:
    """The corpus score at every distinct anomaly score as threshold, highest threshold first.

    The first entry is `NOTHING_DETECTED`. Lowering the threshold past a row adds its false-positive
    cost if it is outside a window, or raises its window's value to its credit if that is higher than
    the window's best so far: each row's change is computed once, in threshold order, and summed.
    """
    rows = _ScoredRows.of(files, scores)
    order = np.argsort(-rows.scores, kind="stable")
    score, window, weighted = rows.scores[order], rows.window[order], rows.weighted(profile)[order]
    inside = window >= 0
    change = np.where(inside, 0.0, weighted)
    # Per window, its running best credit in threshold order: windows get disjoint offsets (credits lie in
    # (0, tp]) so one cumulative maximum over rows sorted by window keeps the windows apart.
    in_rows = np.flatnonzero(inside)
    by_window = in_rows[np.argsort(window[in_rows], kind="stable")]
    spacing = 4.0 * max(profile.tp_weight, profile.fn_weight, 1.0)
    offset = window[by_window] * spacing
    best = np.maximum.accumulate(weighted[by_window] + offset) - offset
    first_of_window = np.r_[True, window[by_window][1:] != window[by_window][:-1]]
    before = np.where(first_of_window, -profile.fn_weight, np.r_[0.0, best[:-1]])
    change[by_window] = best - before
    total = -profile.fn_weight * rows.n_windows + np.cumsum(change)
    detected_tp, detected_fp = np.cumsum(inside), np.cumsum(~inside)
    ends = np.flatnonzero(np.r_[score[1:] != score[:-1], True])
    n_inside = int(inside.sum())
    n_outside = inside.size - n_inside
    above_all = max(NOTHING_DETECTED, float(np.nextafter(score[0], np.inf))) if score.size else NOTHING_DETECTED
    table = [ThresholdScore(above_all, -profile.fn_weight * rows.n_windows, 0, 0, n_inside, n_outside)]
    for end in ends:
        tp, fp = int(detected_tp[end]), int(detected_fp[end])
        table.append(ThresholdScore(float(score[end]), float(total[end]), tp, fp, n_inside - tp, n_outside - fp))
    return table


def optimize_threshold(files: Sequence[LabelledFile], scores: Sequence[Vector], profile: CostProfile) -> ThresholdScore:
    """The best threshold over the whole corpus; of equal scores, the highest threshold (NAB's choice)."""
    table = sweep(files, scores, profile)
    return table[int(np.argmax([entry.score for entry in table]))]


def score_files(
    files: Sequence[LabelledFile], scores: Sequence[Vector], profile: CostProfile, threshold: float
) -> list[ThresholdScore]:
    """Each file's NAB score with one threshold (NAB's scoring step: rows scoring at least it are detected)."""
    rows = _ScoredRows.of(files, scores)
    detected = rows.scores >= threshold
    weighted = rows.weighted(profile)
    inside = rows.window >= 0
    window_value = np.full(rows.n_windows, -profile.fn_weight)
    hit = detected & inside
    np.maximum.at(window_value, rows.window[hit], weighted[hit])
    window_file = np.zeros(rows.n_windows, dtype=np.int64)
    window_file[rows.window[inside]] = rows.file_index[inside]
    per_file = []
    for index in range(len(files)):
        mine = rows.file_index == index
        false_positives = mine & detected & ~inside
        score = float(weighted[false_positives].sum() + window_value[window_file == index].sum())
        tp, fp = int((mine & hit).sum()), int(false_positives.sum())
        fn, tn = int((mine & inside).sum()) - tp, int((mine & ~inside).sum()) - fp
        per_file.append(ThresholdScore(threshold, score, tp, fp, fn, tn))
    return per_file


def null_score(files: Sequence[LabelledFile], profile: CostProfile) -> float:
    """The null detector's optimised score (a constant 0.5 everywhere), NAB's zero."""
    constant = [np.full(labelled.n_rows, 0.5) for labelled in files]
    return optimize_threshold(files, constant, profile).score


def perfect_score(files: Sequence[LabelledFile], profile: CostProfile) -> float:
    """NAB's 100: every labelled window (probationary ones too, as NAB counts them) worth `tp`."""
    return profile.tp_weight * sum(len(labelled.windows) for labelled in files)


def normalized_score(score: float, null: float, perfect: float) -> float:
    """NAB's final figure: 0 for the null detector, 100 for the perfect one."""
    return 100.0 * (score - null) / (perfect - null)


# --- reading a NAB checkout ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NabCorpus:
    """A NAB checkout's data files (relative names as in its label files), values, timestamps and windows."""

    root: Path
    files: tuple[LabelledFile, ...]
    values: tuple[Vector, ...]

    @classmethod
    def read(cls, root: Path, windows_file: str = "labels/combined_windows.json") -> NabCorpus:
        try:
            labelled_windows = json.loads((root / windows_file).read_text())
        except (OSError, ValueError) as exc:
            raise FleetwatchError(f"{root}: not a NAB checkout ({windows_file}: {exc})") from exc
        files, values = [], []
        for name in sorted(labelled_windows):
            table = pa_csv.read_csv(root / "data" / name)
            stamps = table.column("timestamp").to_numpy().astype("datetime64[us]")
            spans = tuple(
                (_row_of(stamps, left, name), _row_of(stamps, right, name)) for left, right in labelled_windows[name]
            )
            files.append(LabelledFile(name, len(stamps), spans))
            values.append(table.column("value").to_numpy().astype(np.float64))
        return cls(root, tuple(files), tuple(values))

    def detector_scores(self, detector: str) -> list[Vector]:
        """A published detector's per-row anomaly scores, `results/<detector>/<dir>/<detector>_<file>`."""
        scores = []
        for labelled in self.files:
            folder, file_name = labelled.name.rsplit("/", 1)
            path = self.root / "results" / detector / folder / f"{detector}_{file_name}"
            column = pa_csv.read_csv(path).column("anomaly_score").to_numpy()
            scores.append(np.asarray(column, dtype=np.float64))
        return scores


def read_profiles(root: Path) -> dict[str, CostProfile]:
    """A NAB checkout's `config/profiles.json` as cost profiles."""
    profiles = json.loads((root / "config" / "profiles.json").read_text())
    return {
        name: CostProfile(
            tp_weight=float(entry["CostMatrix"]["tpWeight"]),
            fp_weight=float(entry["CostMatrix"]["fpWeight"]),
            fn_weight=float(entry["CostMatrix"]["fnWeight"]),
        )
        for name, entry in profiles.items()
    }


def _row_of(stamps: NDArray[np.datetime64], stamp: str, name: str) -> int:
    """The row whose timestamp is exactly `stamp`: NAB matches window edges to rows exactly."""
    rows = np.flatnonzero(stamps == np.datetime64(stamp.replace(" ", "T"), "us"))
    if rows.size != 1:
        raise FleetwatchError(f"{name}: window edge {stamp} is not exactly one row's timestamp")
    return int(rows[0])
