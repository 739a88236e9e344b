"""Every detector kind keeps scikit-learn's outlier contract and finds planted outliers."""

from __future__ import annotations

import time

import joblib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from shared.detectors import (
    DETECTOR_KINDS,
    AAKRDetector,
    AnnoyDetector,
    AutoencoderDetector,
    COPODDetector,
    Detector,
    ECODDetector,
    FeatureExtremeDetector,
    ICADetector,
    IsolationForestDetector,
    KNNDetector,
    LOFDetector,
    OneClassSVMDetector,
    PCADetector,
    RobustZScoreDetector,
    VAEDetector,
    build_detector,
)
from shared.detectors.aakr import squared_distances
from shared.detectors.on_features import OnFeatures

TABULAR_KINDS = sorted(set(DETECTOR_KINDS) - {"deeplog", "mscred"})
"""Kinds that read rows as quantities; DeepLog reads template keys, MS-CRED windows of series (their own tests)."""

# Small instances keep scikit-learn's ~50 checks per estimator within the suite's time budget.
SMALL_DETECTORS: list[Detector] = [
    IsolationForestDetector(n_estimators=20),
    OneClassSVMDetector(n_components=20),
    AutoencoderDetector(hidden_layer_sizes=(8, 2, 8), max_iter=50),
    RobustZScoreDetector(),
    ECODDetector(),
    COPODDetector(),
    KNNDetector(),
    LOFDetector(),
    PCADetector(),
    FeatureExtremeDetector(),
    AnnoyDetector(n_trees=5),
    ICADetector(),
    AAKRDetector(),
    VAEDetector(epochs=3, hidden_units=8),
]


# The small autoencoder stops at max_iter on the checks' tiny data sets; that is expected there.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(SMALL_DETECTORS)
def test_detector_keeps_the_scikit_learn_contract(estimator, check):
    check(estimator)


def blob_with_planted_outliers(n_inliers=400, n_outliers=20, n_features=4, seed=0):
    """A standard Gaussian blob and outliers on a sphere of radius 6 around it; y is 1 for an outlier."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_outliers, n_features))
    outliers = 6.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    X = np.vstack([rng.normal(size=(n_inliers, n_features)), outliers])
    return X, np.r_[np.zeros(n_inliers, dtype=int), np.ones(n_outliers, dtype=int)]


@pytest.fixture(scope="module")
def fitted_detectors() -> dict[str, Detector]:
    train, _ = blob_with_planted_outliers(n_inliers=1000, n_outliers=0, seed=1)
    detectors = {
        "isolation_forest": IsolationForestDetector(random_state=0),
        "ocsvm": OneClassSVMDetector(random_state=0),
        "autoencoder": AutoencoderDetector(hidden_layer_sizes=(8, 2, 8), max_iter=300, random_state=0),
        "robust_zscore": RobustZScoreDetector(),
        "ecod": ECODDetector(),
        "copod": COPODDetector(),
        "knn": KNNDetector(),
        "lof": LOFDetector(),
        "pca": PCADetector(n_components=2),
        "feature_extreme": FeatureExtremeDetector(),
        "annoy": AnnoyDetector(random_state=0),
        "ica": ICADetector(n_components=2, random_state=0),
        "aakr": AAKRDetector(random_state=0),
        "vae": VAEDetector(latent_dim=2, random_state=0),
    }
    return {name: detector.fit(train) for name, detector in detectors.items()}


@pytest.mark.parametrize("kind", sorted(set(TABULAR_KINDS) - {"feature_extreme"}))  # it looks one way only
def test_planted_outliers_score_below_inliers(fitted_detectors, kind):
    X, is_outlier = blob_with_planted_outliers()
    assert roc_auc_score(is_outlier, -fitted_detectors[kind].score_samples(X)) > 0.9


@pytest.mark.parametrize("kind", TABULAR_KINDS)
def test_predict_returns_only_plus_and_minus_one(fitted_detectors, kind):
    X, _ = blob_with_planted_outliers()
    assert set(np.unique(fitted_detectors[kind].predict(X))) == {-1, 1}


# Annoy has no batch query: its C++ index answers one row per call, so a batch costs about what its rows do.
@pytest.mark.parametrize("kind", sorted(set(TABULAR_KINDS) - {"annoy"}))
def test_a_batch_scores_like_its_rows_one_by_one_at_a_fraction_of_the_cost(fitted_detectors, kind):
    detector = fitted_detectors[kind]
    rows = np.random.default_rng(2).normal(size=(100, 4))
    # One BLAS thread: on a busy two-core machine, BLAS threads contend and blur the timing.
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        one_by_one = np.concatenate([detector.score_samples(row[None, :]) for row in rows])
        loop_time = time.perf_counter() - start
        batch_times = []
        for _ in range(3):
            start = time.perf_counter()
            batch = detector.score_samples(rows)
            batch_times.append(time.perf_counter() - start)
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-10)
    # A per-row Python loop inside score_samples would cost about as much as the loop outside it.
    assert min(batch_times) < loop_time / 10


@pytest.mark.parametrize("kind", TABULAR_KINDS)
def test_a_rows_score_does_not_depend_on_which_rows_share_its_batch(fitted_detectors, kind):
    rows = np.random.default_rng(3).normal(size=(700, 4))
    whole = fitted_detectors[kind].score_samples(rows)
    for part in (slice(7, 9), slice(0, 1), slice(250, 700)):
        np.testing.assert_array_equal(fitted_detectors[kind].score_samples(rows[part]), whole[part])


def test_empirical_cdf_detectors_score_a_value_by_its_tail_share_among_training_values():
    train = np.arange(1.0, 100.0)[:, None]  # 1..99
    ecod, copod = ECODDetector().fit(train), COPODDetector().fit(train)
    # 99 is at or above all 99 training values: right tail (1 + 1) / 100; 50 sits in the middle
    assert -ecod.score_samples([[99.0]])[0] == pytest.approx(-np.log(2 / 100))
    assert -ecod.score_samples([[1e6]])[0] == pytest.approx(-np.log(1 / 100))
    assert ecod.score_samples([[50.0]])[0] > ecod.score_samples([[90.0]])[0]
    # a symmetric column counts both tails' mean in COPOD: extremes on either side score alike
    assert copod.score_samples([[-1e6]])[0] == pytest.approx(copod.score_samples([[1e6]])[0])


def test_pca_leaves_out_at_least_one_direction_and_flags_rows_off_the_subspace():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(500, 1))
    X = np.hstack([t, 2 * t, -t]) + 0.01 * rng.normal(size=(500, 3))
    detector = PCADetector(n_components=0.999999).fit(X)
    assert detector.components_.shape == (2, 3)
    on, off = detector.score_samples([[1.0, 2.0, -1.0], [1.0, -2.0, 1.0]])
    assert on > off


def test_feature_extreme_flags_rows_by_the_largest_chosen_feature_only():
    detector = FeatureExtremeDetector(columns=[0, 2]).fit(np.zeros((10, 3)))
    scores = detector.score_samples([[0.0, 50.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    assert scores.tolist() == [0.0, -4.0, -9.0]
    with pytest.raises(ValueError, match="do not index"):
        FeatureExtremeDetector(columns=[3]).fit(np.zeros((10, 3)))


def test_aakrs_single_precision_kernel_ranks_like_double_and_survives_absurd_rows(fitted_detectors):
    aakr = fitted_detectors["aakr"]
    X, _ = blob_with_planted_outliers()
    memory = aakr.memory_.astype(np.float64)
    assert aakr.memory_.dtype == np.float32, "kept as the kernel reads it"
    logits = -squared_distances(X, memory) / (2.0 * aakr.bandwidth_**2)  # the kernel written out in float64
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    exact = -np.sum((X - weights @ memory / weights.sum(axis=1, keepdims=True)) ** 2, axis=1)
    np.testing.assert_allclose(aakr.score_samples(X), exact, rtol=1e-5)
    absurd = np.vstack([X[:1], np.full((1, X.shape[1]), 1e18), np.full((1, X.shape[1]), -1e30)])
    scores = aakr.score_samples(absurd)  # squares of these overflow a float32: clipped for the kernel only
    assert np.all(np.isfinite(scores)) and scores[1] < scores[0] and scores[2] < scores[1]


def test_neighbour_detectors_keep_at_most_max_train_samples_rows():
    X, _ = blob_with_planted_outliers(n_inliers=500, n_outliers=0)
    assert KNNDetector(max_train_samples=100, random_state=0).fit(X).index_.n_samples_fit_ == 100
    assert LOFDetector(max_train_samples=100, random_state=0).fit(X).lof_.n_samples_fit_ == 100


@pytest.mark.parametrize("kind", TABULAR_KINDS)
def test_joblib_round_trip_scores_identically(fitted_detectors, kind, tmp_path):
    X, _ = blob_with_planted_outliers()
    joblib.dump(fitted_detectors[kind], tmp_path / "detector.joblib")
    restored = joblib.load(tmp_path / "detector.joblib")
    np.testing.assert_array_equal(restored.score_samples(X), fitted_detectors[kind].score_samples(X))
    assert restored.offset_ == fitted_detectors[kind].offset_


def test_fit_places_the_offset_at_the_contamination_quantile_of_training_scores():
    X, _ = blob_with_planted_outliers(n_inliers=1000, n_outliers=0)
    detector = RobustZScoreDetector(contamination=0.1).fit(X)
    assert np.mean(detector.predict(X) == -1) == pytest.approx(0.1, abs=0.002)


def test_set_offset_moves_the_operating_point_without_refitting(fitted_detectors):
    detector = fitted_detectors["robust_zscore"]
    X, _ = blob_with_planted_outliers()
    scores_before = detector.score_samples(X)
    original_offset = detector.offset_
    try:
        detector.set_offset(float(np.median(scores_before)))
        assert np.mean(detector.predict(X) == -1) == pytest.approx(0.5, abs=0.01)
        np.testing.assert_array_equal(detector.score_samples(X), scores_before)
        np.testing.assert_allclose(detector.decision_function(X), scores_before - np.median(scores_before))
    finally:
        detector.set_offset(original_offset)


def test_set_offset_refuses_a_non_finite_offset(fitted_detectors):
    with pytest.raises(ValueError, match="finite"):
        fitted_detectors["robust_zscore"].set_offset(float("nan"))


def test_feature_deviations_point_at_the_feature_that_moved(fitted_detectors):
    detector = fitted_detectors["robust_zscore"]
    row = np.zeros((1, 4))
    row[0, 2] = 7.0
    deviations = detector.feature_deviations(row)
    assert deviations.shape == (1, 4)
    assert np.argmax(np.abs(deviations[0])) == 2
    assert detector.score_samples(row)[0] == pytest.approx(-np.max(np.abs(deviations)))


def test_a_mostly_constant_feature_falls_back_to_mean_absolute_deviation():
    mostly_zero = np.r_[np.zeros(90), np.ones(10)]
    X = np.column_stack([mostly_zero, np.random.default_rng(0).normal(size=100)])
    detector = RobustZScoreDetector().fit(X)
    assert detector.scale_[0] == pytest.approx(1.2533 * 0.1)
    assert detector.feature_deviations([[1.0, 0.0]])[0, 0] == pytest.approx(1 / (1.2533 * 0.1))


def test_a_constant_feature_is_scaled_by_the_floor_so_any_change_stands_out():
    X = np.column_stack([np.full(50, 3.0), np.random.default_rng(0).normal(size=50)])
    detector = RobustZScoreDetector(min_scale=1e-6).fit(X)
    assert detector.scale_[0] == 1e-6
    assert np.isfinite(detector.score_samples(X)).all()
    assert detector.predict([[3.5, 0.0]])[0] == -1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_autoencoder_trains_on_at_most_max_train_samples_rows():
    X, _ = blob_with_planted_outliers(n_inliers=500, n_outliers=0)
    detector = AutoencoderDetector(hidden_layer_sizes=(4, 2, 4), max_iter=20, max_train_samples=100)
    detector.set_params(random_state=0).fit(X)
    assert detector.scaler_.n_samples_seen_ == 100
    assert detector.score_samples(X).shape == (500,)


def test_ocsvm_caps_landmarks_at_the_number_of_training_rows():
    X, _ = blob_with_planted_outliers(n_inliers=30, n_outliers=0)
    detector = OneClassSVMDetector(n_components=100, random_state=0).fit(X)
    assert detector.pipeline_[1].components_.shape[0] == 30


@pytest.mark.parametrize("kind", sorted(DETECTOR_KINDS))
def test_build_detector_makes_the_kind_with_the_given_params(kind):
    detector = build_detector(kind, {"contamination": 0.05})
    assert isinstance(detector, DETECTOR_KINDS[kind])
    assert detector.get_params()["contamination"] == 0.05


def test_build_detector_names_the_valid_kinds_for_an_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds: " + ", ".join(sorted(DETECTOR_KINDS))):
        build_detector("hbos", {})


def test_build_detector_names_an_unknown_parameter():
    with pytest.raises(ValueError, match=r"no parameter 'n_trees'.*n_estimators"):
        build_detector("isolation_forest", {"n_trees": 10})


def test_build_detector_names_a_parameter_with_a_bad_value():
    with pytest.raises(ValueError, match="'n_estimators' parameter of IsolationForestDetector"):
        build_detector("isolation_forest", {"n_estimators": 0})


def test_a_detector_on_some_columns_splits_its_residual_over_those_columns_only(fitted_detectors):
    X, _ = blob_with_planted_outliers()
    wide = np.column_stack([np.zeros(len(X)), X])  # column 0 is not the detectors' concern
    columns = list(range(1, wide.shape[1]))
    ica = OnFeatures(ICADetector(random_state=0), columns).fit(wide)
    parts = ica.feature_contributions(wide)
    np.testing.assert_allclose(parts[:, 1:], ica.detector_.feature_contributions(X))
    assert (parts[:, 0] == 0).all() and np.allclose(parts.sum(axis=1), -ica.score_samples(wide))
    forest = OnFeatures(IsolationForestDetector(random_state=0), columns).fit(wide)
    row = np.zeros((1, wide.shape[1]))
    row[0, 2] = 9.0
    assert forest.feature_contributions(row).argmax() == 2, "without a split of its own: the feature farthest out"


def test_a_reconstruction_detector_pickled_with_last_columns_is_refused():
    X, _ = blob_with_planted_outliers()
    state = AAKRDetector(random_state=0).fit(X).__getstate__() | {"last_columns": 2}
    with pytest.raises(ValueError, match="last_columns"):
        AAKRDetector().__setstate__(state)
