"""`fleetwatch bench skab --skab-dir DIR`: fleetwatch's detectors on the Skoltech Anomaly Benchmark (waico/SKAB,
GPL-3.0; the data are read from the user's clone, nothing of it is shipped), outlier-detection problem.

SKAB's own protocol (`core/utils.py: preprocess_skab` and the notebooks): each of the 34 experiment
files (the anomaly-free file aside) is split in time, its first 400 rows train and the rest is the
test part; predictions are 0/1 per test row against the `anomaly` column; TP, FP, FN and TN are summed
over all files' test parts and give F1 = TP / (TP + (FP + FN) / 2), the false alarm rate FAR = FP /
(FP + TN) and the missing alarm rate MAR = FN / (FN + TP) (`core/metrics.py`, metric "binary"). The
threshold comes from training rows only, as in SKAB's notebooks (they take a quantile of the
training residuals): here the fleet's rule, an alert where a row's surprise exceeds the level its
false-positive budget places on the calibration rows (`bench.sensor_windows`). Rows are windows of the
eight sensors (`LAGS` values and their differences); detectors fit the first 320 rows, the next 80
calibrate. MS-CRED (issue 15) reads longer windows of the scaled sensors instead (`MSCRED_PARAMS`: signature
matrices at scales of 5, 10 and 20 seconds at 3 time points 5 seconds apart, 30 rows) and is fitted and
calibrated on the same rows, alone (it is not a member of the combination column).

>>> binary_metrics(tp=6, fp=2, fn=2, tn=10)
(0.75, 16.67, 25.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pa_csv
from sklearn.preprocessing import StandardScaler

from bench.sensor_windows import (
    COMBINATION_COLUMN,
    FIT_SHARE,
    FPR_BUDGET,
    LEVEL_COLUMN,
    SEED,
    available_kinds,
    file_surprises,
    lagged_rows,
    level_rows,
    write_report,
)
from shared.detectors.combination import budget_offset
from shared.detectors.mscred import MSCREDDetector
from shared.errors import FleetwatchError

TRAIN_ROWS = 400
LAGS = 4
LABEL_COLUMNS = ("anomaly", "changepoint")
MSCRED_COLUMN = "mscred"
MSCRED_PARAMS: Mapping[str, Any] = {"scales": (5, 10, 20), "steps": 3, "gap": 5, "epochs": 10, "random_state": SEED}
"""Scales in seconds (SKAB samples once a second): the paper's 10/30/60 steps, halved for files of ~1,100 rows."""

LEADERBOARD: Mapping[str, tuple[float, float, float]] = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T-squared+Q (PCA-based)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "T-squared": (0.66, 19.21, 42.6),
    "Isolation forest": (0.29, 2.56, 82.89),
}
"""SKAB's README leaderboard, outlier detection (F1, FAR %, MAR %), a selection: the best rows and its iforest."""


@dataclass(frozen=True, slots=True)
class SkabFile:
    name: str
    sensors: np.ndarray  # rows × 8
    anomaly: np.ndarray  # 0/1 per row


def read_skab(root: Path) -> list[SkabFile]:
    """Every labelled experiment under `root/data` (SKAB's layout), the anomaly-free file left out."""
    paths = sorted(p for p in (root / "data").rglob("*.csv") if "anomaly-free" not in p.parts)
    if not paths:
        raise FleetwatchError(f"{root}: no SKAB data files under data/ (clone github.com/waico/SKAB)")
    files = []
    for path in paths:
        table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=";"))
        sensors = [name for name in table.column_names if name != "datetime" and name not in LABEL_COLUMNS]
        values = np.column_stack([table.column(name).to_numpy().astype(np.float64) for name in sensors])
        anomaly = table.column("anomaly").to_numpy().astype(np.int64)
        files.append(SkabFile(str(path.relative_to(root / "data")), values, anomaly))
    return files


def window_rows(values: np.ndarray, length: int) -> np.ndarray:
    """Rows × (length · channels): the last `length` rows of every channel, time-major, oldest first (the first
    rows repeat the first row)."""
    padded = np.vstack([np.repeat(values[:1], length - 1, axis=0), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, length, axis=0)  # (rows, channels, length)
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(len(values), -1)


def mscred_alerts(sensors: np.ndarray) -> np.ndarray:
    """MS-CRED's verdict on every row: fitted on the first `FIT_SHARE` of the training rows (behind a scaler
    fitted on them), its alert level at the budget on the rest, as the other columns."""
    fit_end = int(FIT_SHARE * TRAIN_ROWS)
    scaled = StandardScaler().fit(sensors[:fit_end]).transform(sensors)
    detector = MSCREDDetector(n_series=sensors.shape[1], **MSCRED_PARAMS)
    rows = window_rows(scaled, detector.window_length)
    scores = detector.fit(rows[:fit_end]).score_samples(rows)
    return np.asarray(scores < budget_offset(scores[fit_end:TRAIN_ROWS], FPR_BUDGET))


def binary_metrics(tp: int, fp: int, fn: int, tn: int) -> tuple[float, float, float]:
    """SKAB's F1, FAR % and MAR %, rounded as its leaderboard is."""
    return round(tp / (tp + (fn + fp) / 2), 2), round(100 * fp / (fp + tn), 2), round(100 * fn / (fn + tp), 2)


def run_skab(
    skab_dir: Path,
    kinds: Sequence[str] | None = None,
    lags: int = LAGS,
    on_file: Callable[[str], None] = lambda n: None,
    mscred: bool = True,
) -> dict[str, Any]:
    """The benchmark as a JSON-safe dict: pooled confusion counts and F1/FAR/MAR per column."""
    started = time.monotonic()
    files = read_skab(skab_dir)
    chosen = tuple(kinds) if kinds else available_kinds()
    columns = (*chosen, LEVEL_COLUMN, COMBINATION_COLUMN, *((MSCRED_COLUMN,) if mscred else ()))
    counts = {column: np.zeros(4, dtype=np.int64) for column in columns}  # tp, fp, fn, tn
    for skab_file in files:
        on_file(skab_file.name)
        levels = level_rows(skab_file.sensors, TRAIN_ROWS)
        surprises = file_surprises(lagged_rows(skab_file.sensors, lags), TRAIN_ROWS, chosen, levels)
        truth = skab_file.anomaly[TRAIN_ROWS:] == 1
        alerts = {
            column: surprises.surprise[column] > surprises.alert_level[column]
            for column in (*chosen, LEVEL_COLUMN, COMBINATION_COLUMN)
        }
        if mscred:
            alerts[MSCRED_COLUMN] = mscred_alerts(skab_file.sensors)
        for column in columns:
            alert = alerts[column][TRAIN_ROWS:]
            counts[column] += [
                np.sum(alert & truth),
                np.sum(alert & ~truth),
                np.sum(~alert & truth),
                np.sum(~alert & ~truth),
            ]
    results = {}
    for column in columns:
        tp, fp, fn, tn = (int(value) for value in counts[column])
        f1, far, mar = binary_metrics(tp, fp, fn, tn)
        results[column] = {"f1": f1, "far_percent": far, "mar_percent": mar, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    return {
        "benchmark": "Skoltech Anomaly Benchmark (waico/SKAB, GPL-3.0), outlier detection",
        "files": len(files),
        "test_rows": int(sum(len(f.anomaly) - TRAIN_ROWS for f in files)),
        "protocol": {
            "training": f"each file's first {TRAIN_ROWS} rows: the earliest 80 % fit, the rest calibrate",
            "rows": f"last {lags} values of the 8 sensors and their {lags - 1} differences, standard-scaled",
            "level": "each value's distance from its running level as the metrics stream computes it (learned on "
            "the training rows); the stream's level specialist fits on it and joins the combination as a specialist",
            "alert": f"surprise above the level of the fleet's rule at a {FPR_BUDGET} budget on the calibration rows",
            "metrics": "SKAB's binary F1, FAR, MAR over all files' test rows pooled",
        },
        "kinds": list(chosen),
        "results": results,
        "leaderboard": {
            name: {"f1": f1, "far_percent": far, "mar_percent": mar} for name, (f1, far, mar) in LEADERBOARD.items()
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def markdown_table(report: Mapping[str, Any]) -> str:
    lines = ["| detector | F1 | FAR, % | MAR, % |", "| --- | ---: | ---: | ---: |"]
    for column, r in report["results"].items():
        lines.append(f"| fleetwatch {column} | {r['f1']:.2f} | {r['far_percent']:.2f} | {r['mar_percent']:.2f} |")
    for name, r in report["leaderboard"].items():
        lines.append(f"| {name} (SKAB leaderboard) | {r['f1']:.2f} | {r['far_percent']:.2f} | {r['mar_percent']:.2f} |")
    return "\n".join(lines)


def skab_command(skab_dir: Path, out_dir: Path, on_file: Callable[[str], None] = lambda name: None) -> str:
    """`fleetwatch bench skab`: run, write `out_dir/skab.json`, return the table to print."""
    report = run_skab(skab_dir, on_file=on_file)
    write_report(report, out_dir / "skab.json")
    return markdown_table(report)
