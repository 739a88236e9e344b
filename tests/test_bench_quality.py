"""`fleetwatch bench quality`: ADBench's protocol over .npz files, on a small synthetic one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.quality import COMBINATION_COLUMN, FLEET_COLUMN, read_published, run_quality
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


def test_a_file_without_x_and_y_is_refused_with_its_name(tmp_path):
    np.savez(tmp_path / "bad.npz", data=np.zeros(3))
    with pytest.raises(FleetwatchError, match=r"bad.npz: not an ADBench .npz"):
        run_quality([tmp_path / "bad.npz"], kinds=KINDS)


def test_published_figures_in_percent_become_fractions(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("name,published_best\ncardio,93.2\nsatellite,0.74\n")
    assert read_published(published) == {"cardio": pytest.approx(0.932), "satellite": 0.74}


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
