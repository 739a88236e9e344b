"""What the public sensor benchmarks share: series turned into window rows, fleetwatch detectors fitted on
a file's leading rows, and each detector's score turned into a per-file anomaly surprise.

A row at time t holds the last `lags` values of every channel (the first rows repeat the first value)
and their `lags - 1` first differences, so a detector sees both the level and the motion of a window.
Detectors are fitted on the first `FIT_SHARE` of a file's training rows, behind a standard scaler
fitted on the same rows; the rest of the training rows (later in time, so they play the part of new
data) calibrate them: `shared.detectors.combination` maps each detector's residual to its surprise
`-log10 P_calibration(R >= r)` and weighs the detectors by their agreement with the consensus, exactly
as a fleet's training round does.

Beside them runs the sensor-metrics stream's level specialist (`LEVEL_COLUMN`): its detector, as the
stream's defaults configure it, on each channel's distance from its running level, computed by the stream
itself (`level_rows`: the stream learns on the file's training rows and advances over every row), which
joins the combination as a specialist (it alerts alone, it does not vote), as in the stream's fleet.

>>> lagged_rows(np.array([[1.0], [2.0], [4.0]]), lags=2)
array([[1., 1., 0.],
       [1., 2., 1.],
       [2., 4., 2.]])
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from shared.detectors import DETECTOR_KINDS, build_detector
from shared.detectors.combination import budget_offset, fit_combination
from shared.streams.metrics.stream import METRICS
from shared.streams.metrics.windows import MetricColumns

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where `fleetwatch bench nab` and `bench skab` write their JSON unless `--out` says otherwise."""

WANTED_KINDS = ("isolation_forest", "knn", "pca", "ecod", "aakr", "ica", "annoy")
"""The kinds the sensor benchmarks measure, those this build has (the sensor kinds arrive with issue 16)."""

SEED = 0
"""Every kind with a `random_state` gets this one, so a run repeats; all else is each kind's default
(no per-file or per-corpus tuning)."""

FIT_SHARE = 0.8
"""Share of the training rows (the earliest) the detectors fit; the later rest calibrates them."""

FPR_BUDGET = 0.01
"""False-positive budget on the calibration rows that places each column's alert level (as the fleet's does)."""

COMBINATION_COLUMN = "combination"

LEVEL_COLUMN = "level"
"""The sensor-metrics stream's default level specialist, by its name there."""


def write_report(report: Mapping[str, Any], path: Path) -> None:
    """A benchmark's JSON report (`fleetwatch bench nab` / `skab`), its folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def available_kinds(wanted: Sequence[str] = WANTED_KINDS) -> tuple[str, ...]:
    return tuple(kind for kind in wanted if kind in DETECTOR_KINDS)


def lagged_rows(values: Matrix, lags: int) -> Matrix:
    """Rows × (channels·lags values, then channels·(lags-1) differences), oldest first within a channel."""
    values = np.asarray(values, dtype=np.float64)
    padded = np.vstack([np.repeat(values[:1], lags - 1, axis=0), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, lags, axis=0)  # (rows, channels, lags)
    return np.hstack([windows.reshape(len(values), -1), np.diff(windows, axis=2).reshape(len(values), -1)]).astype(
        np.float64
    )


@dataclass(frozen=True, slots=True)
class FileSurprises:
    """Each detector's surprise (and the weighted combination's) for every row of one file."""

    surprise: Mapping[str, Vector]  # column -> per-row surprise, -log10 of the calibration tail probability
    weights: Mapping[str, float]  # the combination's weight of each detector
    alert_level: Mapping[str, float]  # column -> the surprise above which the fleet's rule alerts (its budget)


def level_rows(values: Matrix, train_rows: int) -> Matrix:
    """Each channel's `level` feature (rows × channels) as the sensor-metrics stream computes it: the stream
    learns on the first `train_rows` rows (one asset, a reading per row) and advances over every row."""
    n, channels = values.shape
    names = [f"c{channel:02d}" for channel in range(channels)]  # sorted as the stream sorts its sensors
    columns = MetricColumns.from_values(
        ["file"] * n, np.arange(n, dtype=np.float64).tolist(), [dict(zip(names, row, strict=True)) for row in values]
    )
    stream = METRICS.learn(columns.take(np.arange(train_rows)))
    raw, _ = stream.advance(stream.empty_states(), columns)
    spec = stream.feature_spec.names
    return raw[:, [spec.index(f"level:s{slot:02d}") for slot in range(channels)]]


def file_surprises(rows: Matrix, train_rows: int, kinds: Sequence[str], levels: Matrix | None = None) -> FileSurprises:
    """Fit every kind on the first `FIT_SHARE` of `rows[:train_rows]`, calibrate on the rest, score all rows;
    with `levels` (`level_rows`), the stream's level specialist too, on those."""
    fit_end = max(2, int(FIT_SHARE * train_rows))
    if train_rows - fit_end < 2:
        raise ValueError(f"{train_rows} training rows leave too few to calibrate on")
    scaled = StandardScaler().fit(rows[:fit_end]).transform(rows)
    columns = [_fitted_scores(kind, {}, scaled, fit_end) for kind in kinds]
    names = list(kinds)
    if levels is not None:
        entry = next(entry for entry in METRICS.default_detectors if entry["name"] == LEVEL_COLUMN)
        scaled_levels = StandardScaler().fit(levels[:fit_end]).transform(levels)
        columns.append(_fitted_scores(entry["kind"], entry["params"], scaled_levels, fit_end))
        names.append(LEVEL_COLUMN)
    scores = np.column_stack(columns)
    calibration = scores[fit_end:train_rows]
    specialists = [LEVEL_COLUMN] if levels is not None else []
    combination = fit_combination(calibration, names, fpr_budget=FPR_BUDGET, specialists=specialists)
    per_member = combination.surprises(scores)
    surprise = {name: per_member[:, j] for j, name in enumerate(names)}
    surprise[COMBINATION_COLUMN] = -combination.score_samples(scores)
    # The fleet alerts on `score < offset`, the offset placed at its false-positive budget on calibration rows.
    alert_level = {name: -budget_offset(-surprise[name][fit_end:train_rows], FPR_BUDGET) for name in names}
    alert_level[COMBINATION_COLUMN] = -combination.offset
    return FileSurprises(surprise, dict(combination.weights), alert_level)


def _fitted_scores(kind: str, params: Mapping[str, Any], scaled: Matrix, fit_end: int) -> Vector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seeded = {"random_state": SEED} if "random_state" in DETECTOR_KINDS[kind]().get_params() else {}
        detector = build_detector(kind, {**params, **seeded}).fit(scaled[:fit_end])
    return detector.score_samples(scaled)
