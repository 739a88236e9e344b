"""`fleetwatch bench quality`: ADBench's protocol over .npz files, on a small synthetic one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.quality import COMBINATION_COLUMN, FLEET_COLUMN, _subsample, read_published, run_quality
from shared.errors import FleetwatchError

KINDS = ("ecod", "knn", "pca", "robust_zscore")
SMALL_FLEET = (
    {"name": "iforest", "kind": "isolation_forest", "params": {"n_estimators": 20}},
    {"name": "robust_z", "kind": "robust_zscore", "params": {}},
)


def write_adbench_npz(path: Path, n_inliers: int = 400, n_outliers: int = 20, seed: int = 0) -> Path:
    """A Gaussian blob with outliers on a sphere of radius 6, saved as ADBench saves a data set."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_outliers, 5))
    outliers = 6.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    X = np.vstack([rng.normal(size=(n_inliers, 5)), outliers])
    np.savez(path, X=X, y=np.r_[np.zeros(n_inliers), np.ones(n_outliers)])
    return path


def test_quality_table_has_every_kind_the_fleet_and_the_combination_next_to_the_published_best(tmp_path):
    data = write_adbench_npz(tmp_path / "blob.npz")
    published = tmp_path / "published.csv"
    published.write_text("name,published_best\nblob,95.5\n")
    table = run_quality([data], seeds=2, kinds=KINDS, fleet=SMALL_FLEET, published=published)
    header, _, row, mean = table.splitlines()
    for column in (*KINDS, FLEET_COLUMN, COMBINATION_COLUMN):
        assert f"{column} ROC" in header and f"{column} PR" in header
    assert header.endswith("published best ROC |")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["blob", "420", "5", "4.8 %"]
    assert cells[-1] == "0.955"
    roc = dict(zip((*KINDS, FLEET_COLUMN, COMBINATION_COLUMN), map(float, cells[4:-1:2]), strict=True))
    assert min(roc[column] for column in ("ecod", "knn", FLEET_COLUMN)) > 0.95  # outliers far off the blob
    # PCA finds no subspace in an isotropic blob; the consensus keeps it from dragging the combination down.
    assert roc[COMBINATION_COLUMN] >= max(roc[kind] for kind in KINDS) - 0.01
    assert mean.startswith("| **mean** |")


def test_a_file_over_max_rows_is_subsampled_per_seed_as_adbench_does():
    X, y = np.arange(1000.0).reshape(500, 2), np.r_[np.zeros(480), np.ones(20)]
    first, second = _subsample(X, y, 300, seed=0), _subsample(X, y, 300, seed=1)
    assert first[0].shape == (300, 2) and len(np.unique(first[0][:, 0])) == 300  # without replacement
    assert not np.array_equal(first[0], second[0])
    assert _subsample(X, y, 500, seed=0)[0] is X and _subsample(X, y, None, seed=0)[0] is X


def test_the_figures_and_wall_time_go_to_json_when_asked(tmp_path):
    data = write_adbench_npz(tmp_path / "blob.npz")
    table = run_quality([data], seeds=1, kinds=("ecod",), max_rows=300, json_out=tmp_path / "q.json")
    written = json.loads((tmp_path / "q.json").read_text())
    assert written["protocol"]["max_rows"] == 300 and written["datasets"][0]["seconds"] > 0
    assert f"{written['mean']['ecod']['roc']:.3f}" in table.splitlines()[-1]


def test_a_file_without_x_and_y_is_refused_with_its_name(tmp_path):
    np.savez(tmp_path / "bad.npz", data=np.zeros(3))
    with pytest.raises(FleetwatchError, match=r"bad.npz: not an ADBench .npz"):
        run_quality([tmp_path / "bad.npz"], kinds=KINDS)


def test_published_figures_in_percent_become_fractions(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("name,published_best\ncardio,93.2\nsatellite,0.74\n")
    figures = read_published(published)
    assert figures.columns == ["published_best"]
    assert figures.rows == {"cardio": {"published_best": pytest.approx(0.932)}, "satellite": {"published_best": 0.74}}


def test_every_published_column_is_printed_with_its_mean_over_the_sets_it_has(tmp_path):
    blob, other = write_adbench_npz(tmp_path / "blob.npz"), write_adbench_npz(tmp_path / "other.npz", seed=1)
    published = tmp_path / "published.csv"
    published.write_text("# a comment\nname,IForest,LOF\nblob,90.0,\nother,80.0,70.0\n")
    table = run_quality([blob, other], seeds=1, kinds=("ecod",), published=published, json_out=tmp_path / "q.json")
    header, _, blob_row, other_row, mean = table.splitlines()
    assert header.endswith("| published IForest ROC | published LOF ROC |")
    assert blob_row.endswith("| 0.900 |  |") and other_row.endswith("| 0.800 | 0.700 |")
    assert mean.endswith("| 0.850 | 0.700 |")  # LOF's mean is over the one set with a figure
    written = json.loads((tmp_path / "q.json").read_text())
    assert written["mean_published_roc"] == {"IForest": pytest.approx(0.85), "LOF": pytest.approx(0.7)}
    assert written["datasets"][0]["published_roc"] == {"IForest": pytest.approx(0.9)}


def test_a_published_row_with_too_many_cells_or_a_column_mixing_figures_and_text_is_refused(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("name,IForest\nblob,90.0,80.0\n")
    with pytest.raises(FleetwatchError, match=r"published.csv: expected rows of a name and 1 cell"):
        read_published(published)
    published.write_text("name,IForest\nblob,90.0\nother,n/a\n")
    with pytest.raises(FleetwatchError, match=r"published.csv: column\(s\) IForest mix ROC AUC figures and text"):
        read_published(published)


def test_the_shipped_published_files_are_read_with_their_text_columns_left_out():
    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    best = read_published(results / "adbench_published_best.csv")
    assert best.columns == ["published_best"] and len(best.rows) == 21  # best_method names a method: not a figure
    assert best.rows["4_breastw"] == {"published_best": pytest.approx(0.997)}
    methods = read_published(results / "adbench_published_methods.csv")
    assert methods.columns[0] == "IForest" and len(methods.columns) == 13 and set(methods.rows) == set(best.rows)
    for name, row in methods.rows.items():  # the best file is the per-set maximum of the methods file
        assert max(row.values()) == pytest.approx(best.rows[name]["published_best"])


def test_fleetwatch_bench_quality_prints_the_markdown_table(tmp_path):
    data = write_adbench_npz(tmp_path / "blob.npz", n_inliers=200, n_outliers=10)
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "bench", "quality", str(data), "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| blob | 210 | 5 | 4.8 % |" in done.stdout
    assert "combination ROC" in done.stdout and "default fleet ROC" in done.stdout
