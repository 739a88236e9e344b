"""`fleetwatch bench quality FILES...`: detection quality on public tabular benchmarks, ADBench's protocol.

Each file is an ADBench `.npz` (arrays `X`, rows by features, and `y`, 1 = anomaly), fetched by the
user. Per seed: a file of more than `ADBENCH_MAX_ROWS` rows is first subsampled to that many rows
without replacement (ADBench's own rule, `data_generator.py`, "for considering the computational
cost"; stratified here, so the rarest anomalies survive); then a stratified 70/30 split; every tabular
detector kind, the default fleet of a stream (its detectors under the alert rule a new version of that stream
deploys: their consensus-weighted combination, `shared.detectors.combination`) and the combination of those kinds
(`shared.detectors.combination`) are fitted without labels on the 70 % behind a standard scaler; ROC AUC
and PR AUC on the 30 %; the mean over seeds. The combination fits its members on 80 % of the training
rows and calibrates on the other 20 %, as an unlabelled training round does. A CSV of `name,<column>,...`
(published ROC AUC per data set, in [0, 1] or percent; a cell may be empty) adds one column per published
column, each with its mean over the sets it has a figure for.
ADBench also repeats rows of files under 1,000 rows up to 1,000 before splitting; that is not done here
(the repeats put copies of test rows into the training rows).

>>> print(markdown_table([DatasetQuality("toy", 100, 5, 0.05, {"ecod": (0.91, 0.5)}, {})], ["ecod"]))
| data set | rows | features | anomalies | ecod ROC | ecod PR |
| --- | ---: | ---: | ---: | ---: | ---: |
| toy | 100 | 5 | 5.0 % | 0.910 | 0.500 |
| **mean** |  |  |  | 0.910 | 0.500 |
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from shared.detectors import DETECTOR_KINDS, Detector, build_detector
from shared.detectors.combination import fit_combination
from shared.errors import FleetwatchError

KIND_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "isolation_forest": {"random_state": 0},
    "ocsvm": {"random_state": 0},
    "autoencoder": {"random_state": 0},
    "ecod": {"random_state": 0},
    "copod": {"random_state": 0},
    "knn": {"random_state": 0},
    "lof": {"random_state": 0},
}
"""Defaults of each kind, seeded so a run repeats; kinds left out take their class defaults."""

TABULAR_KINDS = (
    "autoencoder", "copod", "ecod", "isolation_forest", "knn", "lof", "ocsvm", "pca", "robust_zscore",
)  # fmt: skip
"""The kinds that take any table of numbers (the others need sequences, named features or the `deep` extra)."""

ADBENCH_MAX_ROWS = 10_000
"""ADBench subsamples every data set above this many rows to this many, once per seed."""

FLEET_COLUMN, COMBINATION_COLUMN = "default fleet", "combination"


@dataclass(frozen=True)
class DatasetQuality:
    name: str
    rows: int
    features: int
    anomaly_share: float
    results: Mapping[str, tuple[float, float]]  # column -> (mean ROC AUC, mean PR AUC)
    published: Mapping[str, float]  # published column -> ROC AUC, for the columns with a figure for this set
    seconds: float | None = None  # wall time of all seeds


def run_quality(
    files: Sequence[Path],
    *,
    seeds: int = 3,
    kinds: Sequence[str] = TABULAR_KINDS,
    fleet: Sequence[Mapping[str, Any]] = (),
    published: Path | None = None,
    max_rows: int | None = ADBENCH_MAX_ROWS,
    json_out: Path | None = None,
    on_dataset: Callable[[str], None] = lambda name: None,
) -> str:
    """The markdown table for `files`; `fleet` is a stream's `default_detectors` (`{name, kind, params}`).

    `json_out`, when given, receives the same figures per data set and column, with each file's wall time.
    """
    if not files:
        raise FleetwatchError("give at least one ADBench .npz file (arrays X and y)")
    published_figures = read_published(published) if published else PublishedFigures([], {})
    columns = [*kinds, *([FLEET_COLUMN] if fleet else []), COMBINATION_COLUMN]
    measured = []
    for path in files:
        on_dataset(path.stem)
        X, y = load_npz(path)
        started = time.perf_counter()
        per_seed = [_one_seed(*_subsample(X, y, max_rows, seed), seed, kinds, fleet) for seed in range(seeds)]
        measured.append(
            DatasetQuality(
                name=path.stem,
                rows=len(y),
                features=X.shape[1],
                anomaly_share=float(y.mean()),
                results={c: tuple(np.mean([run[c] for run in per_seed], axis=0)) for c in columns},
                published=published_figures.rows.get(path.stem, {}),
                seconds=time.perf_counter() - started,
            )
        )
    if json_out is not None:
        settings = {"seeds": seeds, "max_rows": max_rows, "kinds": list(kinds), "fleet": [dict(e) for e in fleet]}
        json_out.write_text(
            json.dumps(quality_json(measured, columns, published_figures.columns, settings), indent=1) + "\n"
        )
    return markdown_table(measured, columns, published_figures.columns)


def quality_json(
    measured: Sequence[DatasetQuality],
    columns: Sequence[str],
    published_columns: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The figures of `markdown_table` as plain values: per data set and column ROC and PR AUC, and the means."""
    return {
        "protocol": dict(settings),
        "datasets": [
            {
                "name": d.name,
                "rows": d.rows,
                "features": d.features,
                "anomaly_share": d.anomaly_share,
                "seconds": d.seconds,
                "published_roc": dict(d.published),
                **{c: {"roc": d.results[c][0], "pr": d.results[c][1]} for c in columns},
            }
            for d in measured
        ],
        "mean": {c: _mean_aucs(measured, c) for c in columns},
        "mean_published_roc": {c: _mean_published(measured, c) for c in published_columns},
        "seconds": float(sum(d.seconds or 0.0 for d in measured)),
    }


def _mean_aucs(measured: Sequence[DatasetQuality], column: str) -> dict[str, float]:
    roc, pr = np.mean([d.results[column] for d in measured], axis=0)
    return {"roc": float(roc), "pr": float(pr)}


def _subsample(X: np.ndarray, y: np.ndarray, max_rows: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_rows` rows drawn without replacement, a new draw per seed (ADBench's rule for large sets).

    Stratified, where ADBench draws plainly: smtp has 30 anomalies in 95,156 rows, and a plain draw of 10,000 can
    keep fewer than the 2 that the stratified 70/30 split needs.
    """
    if max_rows is None or len(y) <= max_rows:
        return X, y
    rows, _ = train_test_split(np.arange(len(y)), train_size=max_rows, stratify=y, random_state=seed)
    return X[rows], y[rows]


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`X` as float64 rows and `y` as 0/1; a file without both, or without both classes, is refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            X, y = np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(int).ravel()
    except (OSError, KeyError, ValueError) as exc:
        raise FleetwatchError(f"{path}: not an ADBench .npz with arrays X and y ({exc})") from exc
    if X.ndim != 2 or len(X) != len(y) or set(np.unique(y)) != {0, 1}:
        raise FleetwatchError(f"{path}: X must be rows × features and y 0/1 with both classes, one per row")
    return X, y


@dataclass(frozen=True)
class PublishedFigures:
    """Published ROC AUCs: the columns in file order, and per data set the columns that have a figure for it."""

    columns: list[str]
    rows: dict[str, dict[str, float]]


def read_published(path: Path) -> PublishedFigures:
    """`name,<column>,...` rows under an optional header (without one, the one column is `published_best`); lines
    starting with # are comments, an empty cell is no figure, percentages (> 1) are turned into fractions. A column
    of text only (a method's name, say) is not a figure column; one mixing numbers and text is refused."""
    with path.open(newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if row and not row[0].startswith("#")]
    header = rows.pop(0)[1:] if rows and rows[0][0] == "name" else ["published_best"]
    if any(len(row) != len(header) + 1 for row in rows):
        raise FleetwatchError(f"{path}: expected rows of a name and {len(header)} cell(s), as its header")
    cells = {column: [row[1 + i] for row in rows] for i, column in enumerate(header)}
    numeric = {column: [_number(cell) for cell in values] for column, values in cells.items()}
    columns = [c for c in header if any(value is not None for value in numeric[c])]
    mixed = [
        c for c in columns if any(value is None and cell for value, cell in zip(numeric[c], cells[c], strict=True))
    ]
    if mixed:
        raise FleetwatchError(f"{path}: column(s) {', '.join(mixed)} mix ROC AUC figures and text")
    figures = {
        row[0]: {c: value / 100.0 if value > 1.0 else value for c in columns if (value := numeric[c][i]) is not None}
        for i, row in enumerate(rows)
    }
    return PublishedFigures(columns, figures)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _mean_published(measured: Sequence[DatasetQuality], column: str) -> float | None:
    known = [d.published[column] for d in measured if column in d.published]
    return float(np.mean(known)) if known else None


def _one_seed(
    X: np.ndarray, y: np.ndarray, seed: int, kinds: Sequence[str], fleet: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[float, float]]:
    X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    train, test = scaler.transform(X_train), scaler.transform(X_test)
    fitted = {kind: _fit(kind, dict(KIND_PARAMS.get(kind, {})), train, seed) for kind in kinds}
    results = {kind: _aucs(y_test, fitted[kind].score_samples(test)) for kind in kinds}
    if fleet:
        entries = [(entry["name"], entry["kind"], dict(entry.get("params", {}))) for entry in fleet]
        results[FLEET_COLUMN] = _aucs(y_test, _combined_scores(entries, train, test, seed))
    entries = [(kind, kind, dict(KIND_PARAMS.get(kind, {}))) for kind in kinds]
    results[COMBINATION_COLUMN] = _aucs(y_test, _combined_scores(entries, train, test, seed))
    return results


def _combined_scores(
    entries: Sequence[tuple[str, str, dict[str, Any]]], train: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    """The combined score of these members as an unlabelled training round builds it: members fit 80 % of the
    training rows, the consensus-weighted combination calibrates on the other 20 %."""
    fit_rows, calibration_rows = train_test_split(np.arange(len(train)), test_size=0.2, random_state=seed)
    members = [_fit(kind, dict(params), train[fit_rows], seed) for _, kind, params in entries]
    calibration = np.column_stack([member.score_samples(train[calibration_rows]) for member in members])
    combination = fit_combination(calibration, [name for name, _, _ in entries], fpr_budget=0.01)
    return np.asarray(combination.score_samples(np.column_stack([member.score_samples(test) for member in members])))


def _fit(kind: str, params: dict[str, Any], rows: np.ndarray, seed: int) -> Detector:
    if "random_state" in DETECTOR_KINDS[kind]().get_params():
        params["random_state"] = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return build_detector(kind, params).fit(rows)


def _aucs(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC and PR AUC of `scores` (higher = more normal, as every detector's `score_samples`)."""
    return float(roc_auc_score(y, -scores)), float(average_precision_score(y, -scores))


def markdown_table(
    measured: Sequence[DatasetQuality], columns: Sequence[str], published_columns: Sequence[str] = ()
) -> str:
    """One row per data set, ROC and PR AUC per column, the published columns when given, and the mean row (a
    published column's mean is over the sets it has a figure for)."""
    header = ["data set", "rows", "features", "anomalies"]
    header += [f"{c} {metric}" for c in columns for metric in ("ROC", "PR")]
    header += [f"published {c.removeprefix('published_').replace('_', ' ')} ROC" for c in published_columns]
    lines = [header, ["---", *["---:"] * (len(header) - 1)]]
    for d in measured:
        cells = [d.name, f"{d.rows:,}", str(d.features), f"{100 * d.anomaly_share:.1f} %"]
        cells += [f"{value:.3f}" for c in columns for value in d.results[c]]
        cells += [f"{d.published[c]:.3f}" if c in d.published else "" for c in published_columns]
        lines.append(cells)
    means = [f"{np.mean([d.results[c][i] for d in measured]):.3f}" for c in columns for i in (0, 1)]
    published_means = [_mean_published(measured, c) for c in published_columns]
    lines.append(["**mean**", "", "", "", *means, *("" if m is None else f"{m:.3f}" for m in published_means)])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
