"""`fleetwatch bench nab --nab-dir DIR`: fleetwatch's detectors on the Numenta Anomaly Benchmark, scored by
NAB's rules (`bench.nab_scoring`) under its three profiles, beside NAB's published scoreboard.

Protocol, the same for every one of NAB's 58 files (no per-file setting): a file's probationary
period (its first 15 %, at most 750 rows, which NAB does not score) is all a detector learns from;
rows are windows of the value (`bench.sensor_windows.lagged_rows`, `LAGS` values and their
differences); the detectors fit the earliest 80 % of the probationary rows and the later 20 %
calibrate them, which turns each detector's score into its surprise (`-log10` of the share of
calibration rows at least as anomalous: a rank among the probationary scores) and weighs them into
the fleet's combination. NAB needs an anomaly likelihood in [0, 1]: `likelihood = s / (1 + s)` of
the surprise `s` (0 for rows no more surprising than the calibration's most normal). NAB's score only
depends on the order of the likelihoods over the corpus (the threshold is optimised over all files),
so any increasing map gives the same figures; this one keeps the order of rows far beyond the
calibration range, where `1 - 10^-s` would round to 1.

Before scoring, the run checks the scorer against NAB's published results in the same checkout:
published detectors' per-row scores (`results/<detector>/...`), scored at NAB's stored thresholds,
must give `results/final_results.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.nab_scoring import (
    PROFILES,
    NabCorpus,
    ThresholdScore,
    normalized_score,
    null_score,
    optimize_threshold,
    perfect_score,
    probation_length,
    score_files,
)
from bench.sensor_windows import (
    COMBINATION_COLUMN,
    LEVEL_COLUMN,
    Vector,
    available_kinds,
    file_surprises,
    lagged_rows,
    level_rows,
    write_report,
)
from shared.errors import FleetwatchError

LAGS = 8
REPRODUCED_DETECTORS = ("numenta", "ARTime")
"""Published detectors whose raw result files the run re-scores to check the scorer."""

SCOREBOARD: Mapping[str, Mapping[str, float]] = {
    "ARTime": {"standard": 74.9, "reward_low_FP_rate": 65.1, "reward_low_FN_rate": 80.4},
    "Numenta HTM": {"standard": 70.5, "reward_low_FP_rate": 62.6, "reward_low_FN_rate": 75.2},
    "CAD OSE": {"standard": 69.9, "reward_low_FP_rate": 67.0, "reward_low_FN_rate": 73.2},
    "KNN CAD": {"standard": 58.0, "reward_low_FP_rate": 43.4, "reward_low_FN_rate": 64.8},
    "Random Cut Forest": {"standard": 51.7, "reward_low_FP_rate": 38.4, "reward_low_FN_rate": 59.7},
    "Windowed Gaussian": {"standard": 39.6, "reward_low_FP_rate": 20.9, "reward_low_FN_rate": 47.4},
    "Random": {"standard": 11.0, "reward_low_FP_rate": 1.2, "reward_low_FN_rate": 19.5},
}
"""NAB's README scoreboard (v1.1), a selection; Numenta HTM is the top of its 70.5-69.7 seed range."""


@dataclass(frozen=True)
class ProfileResult:
    normalized: float
    raw: float
    threshold: float
    detected_windows: int
    false_positive_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "normalized": round(self.normalized, 3),
            "raw": round(self.raw, 4),
            "threshold": self.threshold,
            "detected_windows": self.detected_windows,
            "false_positive_rows": self.false_positive_rows,
        }


def likelihood(surprise: Vector) -> Vector:
    """An increasing map of the surprise onto [0, 1): 0 up to the calibration's most normal row."""
    positive = np.maximum(surprise, 0.0)
    return positive / (1.0 + positive)


def corpus_likelihoods(
    corpus: NabCorpus,
    kinds: Sequence[str],
    lags: int = LAGS,
    on_file: Callable[[str], None] = lambda name: None,
) -> tuple[dict[str, list[Vector]], list[dict[str, float]]]:
    """Per column (each kind, then the combination) the likelihood series of every file; the weights per file."""
    columns: dict[str, list[Vector]] = {column: [] for column in (*kinds, LEVEL_COLUMN, COMBINATION_COLUMN)}
    weights = []
    for labelled, values in zip(corpus.files, corpus.values, strict=True):
        on_file(labelled.name)
        rows = lagged_rows(values[:, None], lags)
        probation = probation_length(labelled.n_rows)
        surprises = file_surprises(rows, probation, kinds, level_rows(values[:, None], probation))
        for column in columns:
            columns[column].append(likelihood(surprises.surprise[column]))
        weights.append(dict(surprises.weights))
    return columns, weights


def score_columns(corpus: NabCorpus, columns: Mapping[str, Sequence[Vector]]) -> dict[str, dict[str, ProfileResult]]:
    """Every column under every profile: the corpus-optimised threshold and NAB's normalised score."""
    results: dict[str, dict[str, ProfileResult]] = {}
    for column, scores in columns.items():
        results[column] = {}
        for name, profile in PROFILES.items():
            best = optimize_threshold(corpus.files, scores, profile)
            per_file = score_files(corpus.files, scores, profile, best.threshold)
            results[column][name] = ProfileResult(
                normalized=normalized_score(
                    best.score, null_score(corpus.files, profile), perfect_score(corpus.files, profile)
                ),
                raw=best.score,
                threshold=best.threshold,
                detected_windows=_detected_windows(corpus, scores, best),
                false_positive_rows=sum(entry.fp for entry in per_file),
            )
    return results


def reproduce_published(corpus: NabCorpus, detectors: Sequence[str] = REPRODUCED_DETECTORS) -> dict[str, Any]:
    """Published detectors re-scored: at NAB's stored thresholds, and at our own optimised threshold."""
    if not (corpus.root / "results" / "final_results.json").is_file():
        return {}
    published = json.loads((corpus.root / "results" / "final_results.json").read_text())
    thresholds = json.loads((corpus.root / "config" / "thresholds.json").read_text())
    checks: dict[str, Any] = {}
    for detector in detectors:
        if not (corpus.root / "results" / detector).is_dir():
            continue
        scores = corpus.detector_scores(detector)
        checks[detector] = {}
        for name, profile in PROFILES.items():
            null, perfect = null_score(corpus.files, profile), perfect_score(corpus.files, profile)
            at_nab = sum(
                entry.score
                for entry in score_files(corpus.files, scores, profile, thresholds[detector][name]["threshold"])
            )
            ours = optimize_threshold(corpus.files, scores, profile)
            checks[detector][name] = {
                "published": published[detector][name],
                "at_nab_threshold": normalized_score(at_nab, null, perfect),
                "optimised_here": normalized_score(ours.score, null, perfect),
            }
    return checks


def run_nab(
    nab_dir: Path, kinds: Sequence[str] | None = None, lags: int = LAGS, on_file: Callable[[str], None] = lambda n: None
) -> dict[str, Any]:
    """The whole benchmark as a JSON-safe dict: protocol, reproduction check, figures per column and profile."""
    started = time.monotonic()
    corpus = NabCorpus.read(nab_dir)
    chosen = tuple(kinds) if kinds else available_kinds()
    if not chosen:
        raise FleetwatchError("none of the wanted detector kinds is in this build")
    reproduction = reproduce_published(corpus)
    columns, weights = corpus_likelihoods(corpus, chosen, lags, on_file)
    results = score_columns(corpus, columns)
    return {
        "benchmark": "Numenta Anomaly Benchmark (numenta/NAB, MIT licence)",
        "nab_commit": _head_commit(nab_dir),
        "files": len(corpus.files),
        "windows": sum(len(labelled.windows) for labelled in corpus.files),
        "rows": sum(labelled.n_rows for labelled in corpus.files),
        "protocol": {
            "training": "each file's probationary period (first 15 %, at most 750 rows): "
            "the earliest 80 % fit, the rest calibrate",
            "rows": f"last {lags} values and their {lags - 1} differences, standard-scaled on the fitted rows",
            "level": "each value's distance from its running level as the metrics stream computes it (learned on "
            "the training rows); the stream's level specialist fits on it and joins the combination as a specialist",
            "likelihood": "s / (1 + s) of the calibration surprise s = -log10 tail probability",
            "threshold": "NAB's: one per profile, optimised over the whole corpus",
        },
        "kinds": list(chosen),
        "mean_combination_weights": {kind: round(float(np.mean([w[kind] for w in weights])), 3) for kind in chosen},
        "reproduction": reproduction,
        "results": {
            column: {name: r.to_dict() for name, r in by_profile.items()} for column, by_profile in results.items()
        },
        "scoreboard": {name: dict(figures) for name, figures in SCOREBOARD.items()},
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def markdown_tables(report: Mapping[str, Any]) -> str:
    """The reproduction check, then our figures beside the scoreboard, one column per profile."""
    profiles = list(PROFILES)
    lines = [
        "| reproduction: published detector | profile | final_results.json | at NAB's threshold | optimised here |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for detector, by_profile in report["reproduction"].items():
        for name, check in by_profile.items():
            cells = (check["published"], check["at_nab_threshold"], check["optimised_here"])
            lines.append(f"| {detector} | {name} | " + " | ".join(f"{value:.3f}" for value in cells) + " |")
    lines += ["", "| detector | " + " | ".join(profiles) + " | windows detected (standard) |",
              "| --- | " + " | ".join("---:" for _ in profiles) + " | ---: |"]  # fmt: skip
    for column, by_profile in report["results"].items():
        figures = " | ".join(f"{by_profile[name]['normalized']:.1f}" for name in profiles)
        found = f"{by_profile['standard']['detected_windows']} / {report['windows']}"
        lines.append(f"| fleetwatch {column} | {figures} | {found} |")
    for name, figures in report["scoreboard"].items():
        lines.append(f"| {name} (NAB scoreboard) | " + " | ".join(f"{figures[p]:.1f}" for p in profiles) + " | |")
    return "\n".join(lines)


def nab_command(nab_dir: Path, out_dir: Path, on_file: Callable[[str], None] = lambda name: None) -> str:
    """`fleetwatch bench nab`: run, write `out_dir/nab.json`, return the tables to print."""
    report = run_nab(nab_dir, on_file=on_file)
    write_report(report, out_dir / "nab.json")
    return markdown_tables(report)


def _detected_windows(corpus: NabCorpus, scores: Sequence[Vector], best: ThresholdScore) -> int:
    """Labelled windows with a detected scorable row at the chosen threshold."""
    found = 0
    for labelled, file_scores in zip(corpus.files, scores, strict=True):
        start = probation_length(labelled.n_rows)
        for left, right in labelled.windows:
            span = file_scores[max(left, start) : right + 1]
            found += bool(span.size and np.any(span >= best.threshold))
    return found


def _head_commit(root: Path) -> str | None:
    head = root / ".git" / "HEAD"
    if not head.is_file():
        return None
    reference = head.read_text().strip()
    if reference.startswith("ref: "):
        target = root / ".git" / reference[5:]
        return target.read_text().strip() if target.is_file() else None
    return reference
