"""MS-CRED's signature matrices are the windows' mean inner products per scale, and a trained detector
survives pickling (its network is rebuilt from the kept weights, never pickled)."""

from __future__ import annotations

import pickle

import numpy as np

from shared.detectors.mscred import MSCREDDetector


def test_signature_matrices_are_mean_inner_products_over_each_scale_at_each_time_point() -> None:
    detector = MSCREDDetector(n_series=3, scales=(2, 4), steps=2, gap=1)
    assert detector.window_length == 5
    window = np.arange(15.0).reshape(5, 3)  # 5 steps of 3 series, oldest first
    matrices = detector.signature_matrices(window.ravel()[None, :])
    assert matrices.shape == (1, 2, 4, 4, 2)  # side padded to a multiple of 4
    newest_scale_2 = window[3:5].T @ window[3:5] / 2
    older_scale_4 = window[0:4].T @ window[0:4] / 4
    np.testing.assert_allclose(matrices[0, 1, :3, :3, 0], newest_scale_2)
    np.testing.assert_allclose(matrices[0, 0, :3, :3, 1], older_scale_4)
    assert not matrices[0, :, 3, :, :].any() and not matrices[0, :, :, 3, :].any()


def test_a_trained_detector_scores_alike_after_pickling() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(400) / 8
    series = np.column_stack([np.sin(t), np.cos(t)]) + rng.normal(0, 0.05, (len(t), 2))
    detector = MSCREDDetector(n_series=2, scales=(3, 6), steps=2, gap=2, epochs=2, random_state=0)
    rows = np.array([series[i - detector.window_length : i].ravel() for i in range(detector.window_length, len(t))])
    detector.fit(rows)
    copy = pickle.loads(pickle.dumps(detector))
    assert "_network_cache" not in copy.__dict__
    np.testing.assert_allclose(copy.score_samples(rows[:20]), detector.score_samples(rows[:20]), rtol=1e-6)
