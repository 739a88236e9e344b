"""Threshold maths: known answers, properties that hold for any held-out scores, and the fleet budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.thresholds import (
    DEFAULT_ACTIVE_METHOD,
    DetectorThresholds,
    ThresholdConfig,
    ThresholdMethod,
    compute_thresholds,
    union_false_positive_rate,
)

M = ThresholdMethod

finite_scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
score_columns = arrays(np.float64, st.integers(2, 200), elements=finite_scores)
score_matrices = st.tuples(st.integers(2, 150), st.integers(1, 4)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=finite_scores)
)
distinct_score_matrices = st.tuples(st.integers(2, 150), st.integers(1, 4)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=finite_scores, unique=True)
)
rates = st.floats(min_value=0.001, max_value=0.5)


def thresholds_of(scores, **config) -> DetectorThresholds:
    (thresholds,) = compute_thresholds(np.asarray(scores, dtype=np.float64)[:, None], ThresholdConfig(**config))
    return thresholds


def flagged_share(scores, offset: float) -> float:
    return float(np.mean(np.asarray(scores) < offset))


# Known answers


def test_scores_one_to_a_hundred_give_the_textbook_thresholds():
    scores = np.arange(1.0, 101.0)
    thresholds = thresholds_of(scores, quantile=0.95, target_fpr=0.05, fleet_fpr_budget=0.05)
    assert thresholds.offset(M.QUANTILE) == pytest.approx(5.95)
    assert flagged_share(scores, thresholds.offset(M.QUANTILE)) == 0.05
    assert thresholds.offset(M.TARGET_FPR) == 6.0
    assert thresholds.offset(M.FLEET_BUDGET) == 6.0
    assert thresholds.offset(M.MAX) == 1.0
    assert thresholds.offset(M.MIN) == 100.0
    assert thresholds.offset(M.MEAN_K_STD) == pytest.approx(50.5 - 6 * math.sqrt((100**2 - 1) / 12))
    assert thresholds.n_held_out == 100


def test_constant_plus_alternating_noise_gives_level_plus_k_noise_amplitudes():
    level, amplitude = 3.0, 0.5
    residuals = level + amplitude * np.tile([1.0, -1.0], 50)
    thresholds = thresholds_of(-residuals, std_multiplier=6.0, moving_average_window=2)
    assert thresholds.offset(M.MEAN_K_STD) == pytest.approx(-(level + 6 * amplitude))
    assert thresholds.offset(M.MAX) == -(level + amplitude)
    assert thresholds.offset(M.MIN) == -(level - amplitude)
    assert thresholds.offset(M.MOVING_AVERAGE) == pytest.approx(-(level + amplitude))
    assert thresholds.offset(M.QUANTILE) == -(level + amplitude)


def test_constant_plus_gaussian_noise_gives_about_level_plus_six_sigma():
    residuals = 10.0 + np.random.default_rng(0).normal(scale=0.1, size=20_000)
    thresholds = thresholds_of(-residuals)
    assert thresholds.offset(M.MEAN_K_STD) == pytest.approx(-(10.0 + 6 * 0.1), abs=0.01)
    assert thresholds.offset(M.QUANTILE) == pytest.approx(-(10.0 + 1.645 * 0.1), abs=0.01)
    assert thresholds.offset(M.TARGET_FPR) == pytest.approx(-(10.0 + 2.326 * 0.1), abs=0.01)


def test_a_constant_series_puts_every_threshold_on_the_constant_and_flags_nothing():
    thresholds = thresholds_of(np.full(30, -2.0))
    assert set(thresholds.offsets.values()) == {-2.0}
    assert flagged_share(np.full(30, -2.0), thresholds.offset(M.MIN)) == 0.0


def test_moving_average_absorbs_drift_into_the_level_and_keeps_the_band_at_the_noise():
    time_steps = np.arange(1000)
    noise = 0.01 * np.tile([1.0, -1.0], 500)
    residuals = time_steps / 1000 + noise
    thresholds = thresholds_of(-residuals, moving_average_window=10)
    band = -thresholds.offset(M.MOVING_AVERAGE) - residuals.max()
    assert 0.0 <= band < 0.02  # a margin about the noise amplitude, not the drift's 1.0
    assert flagged_share(-residuals, thresholds.offset(M.MOVING_AVERAGE)) == 0.0


def test_a_moving_average_window_longer_than_the_held_out_set_uses_the_whole_set():
    residuals = np.array([1.0, 3.0, 2.0])
    thresholds = thresholds_of(-residuals, moving_average_window=50)
    assert thresholds.offset(M.MOVING_AVERAGE) == -(2.0 + 1.0)


# Properties


@given(score_columns)
def test_methods_are_ordered_from_lenient_to_strict(scores):
    thresholds = thresholds_of(scores)
    assert (
        thresholds.offset(M.MOVING_AVERAGE)
        <= thresholds.offset(M.MAX)
        <= thresholds.offset(M.QUANTILE)
        <= thresholds.offset(M.MIN)
    )


@given(score_columns)
def test_max_and_moving_average_flag_no_held_out_row_and_min_flags_all_but_the_most_normal(scores):
    thresholds = thresholds_of(scores)
    assert flagged_share(scores, thresholds.offset(M.MAX)) == 0.0
    assert flagged_share(scores, thresholds.offset(M.MOVING_AVERAGE)) == 0.0
    assert flagged_share(scores, thresholds.offset(M.MIN)) == np.mean(scores < scores.max())


@given(score_columns)
def test_moving_average_with_a_window_of_one_is_max(scores):
    thresholds = thresholds_of(scores, moving_average_window=1)
    assert thresholds.offset(M.MOVING_AVERAGE) == thresholds.offset(M.MAX)


@given(score_columns, rates)
def test_target_fpr_never_exceeds_the_target_on_held_out_data(scores, fpr):
    thresholds = thresholds_of(scores, target_fpr=fpr)
    assert flagged_share(scores, thresholds.offset(M.TARGET_FPR)) <= fpr


@given(arrays(np.float64, st.integers(2, 200), elements=finite_scores, unique=True), rates)
def test_target_fpr_on_distinct_scores_flags_as_many_rows_as_the_target_allows(scores, fpr):
    flagged = np.sum(scores < thresholds_of(scores, target_fpr=fpr).offset(M.TARGET_FPR))
    assert flagged / scores.size <= fpr < (flagged + 1) / scores.size


@given(score_columns, st.floats(min_value=0.5, max_value=0.99), st.floats(min_value=0.0, max_value=0.49))
def test_a_higher_quantile_is_a_more_lenient_offset(scores, higher, gap):
    lower = higher - gap
    assert thresholds_of(scores, quantile=higher).offset(M.QUANTILE) <= thresholds_of(scores, quantile=lower).offset(
        M.QUANTILE
    )


# Eighths keep distinct scores distinct after the transformation, so order statistics stay put.
@given(
    arrays(np.float64, st.integers(2, 100), elements=st.integers(-8000, 8000).map(lambda i: i / 8)),
    st.floats(-1e3, 1e3),
    st.floats(0.01, 100.0),
)
def test_every_method_moves_with_a_shift_and_a_positive_rescale_of_the_scores(scores, shift, factor):
    original = thresholds_of(scores)
    transformed = thresholds_of(factor * scores + shift)
    for method in ThresholdMethod:
        assert transformed.offset(method) == pytest.approx(
            factor * original.offset(method) + shift, rel=1e-6, abs=1e-6 * (1 + factor * 1e3)
        )


@given(score_matrices, rates)
def test_the_fleet_budget_bounds_the_union_false_positive_rate(scores, budget):
    offsets = [t.offset(M.FLEET_BUDGET) for t in compute_thresholds(scores, ThresholdConfig(fleet_fpr_budget=budget))]
    assert union_false_positive_rate(scores, offsets) <= budget


@given(distinct_score_matrices, rates)
def test_the_fleet_budget_is_spent_to_within_one_row_per_detector(scores, budget):
    n_rows, n_detectors = scores.shape
    offsets = [t.offset(M.FLEET_BUDGET) for t in compute_thresholds(scores, ThresholdConfig(fleet_fpr_budget=budget))]
    flagged_rows = np.count_nonzero(np.any(scores < np.asarray(offsets), axis=1))
    # One rank more flags at most one more row per detector, and that would exceed the budget.
    assert (flagged_rows + n_detectors) / n_rows > budget


@given(score_columns, rates)
def test_a_fleet_of_one_spends_its_budget_like_target_fpr(scores, rate):
    thresholds = thresholds_of(scores, target_fpr=rate, fleet_fpr_budget=rate)
    assert thresholds.offset(M.FLEET_BUDGET) == thresholds.offset(M.TARGET_FPR)


@given(score_matrices)
def test_thresholds_survive_a_json_round_trip(scores):
    for thresholds in compute_thresholds(scores):
        assert DetectorThresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds


# The fleet budget on realistic data


def test_independent_detectors_calibrated_together_hold_the_budget_on_fresh_data():
    rng = np.random.default_rng(0)
    held_out, fresh = rng.normal(size=(20_000, 3)), rng.normal(size=(20_000, 3))
    thresholds = compute_thresholds(held_out, ThresholdConfig(fleet_fpr_budget=0.01, target_fpr=0.01))
    fleet_offsets = [t.offset(M.FLEET_BUDGET) for t in thresholds]
    separate_offsets = [t.offset(M.TARGET_FPR) for t in thresholds]

    assert 0.01 - 3 / 20_000 < union_false_positive_rate(held_out, fleet_offsets) <= 0.01
    assert union_false_positive_rate(fresh, fleet_offsets) == pytest.approx(0.01, abs=0.003)
    # Each detector at 1% on its own would let the fleet alert on about 3% of normal events.
    assert union_false_positive_rate(fresh, separate_offsets) == pytest.approx(0.03, abs=0.005)


def test_correlated_detectors_each_get_more_than_an_equal_split_of_the_budget():
    rng = np.random.default_rng(1)
    shared_signal = rng.normal(size=(20_000, 1))
    held_out = shared_signal + 0.3 * rng.normal(size=(20_000, 3))
    offsets = [t.offset(M.FLEET_BUDGET) for t in compute_thresholds(held_out, ThresholdConfig(fleet_fpr_budget=0.01))]
    per_detector_rates = np.mean(held_out < np.asarray(offsets), axis=0)
    assert (per_detector_rates > 0.01 / 3).all()


# Configuration and the stored form


def test_the_default_active_method_is_the_fleet_budget():
    assert DEFAULT_ACTIVE_METHOD is M.FLEET_BUDGET
    thresholds = thresholds_of(np.arange(10.0))
    assert thresholds.offset() == thresholds.offset(M.FLEET_BUDGET)


def test_to_dict_is_plain_json_with_every_method_and_the_config():
    data = thresholds_of(np.arange(10.0)).to_dict()
    assert set(data["offsets"]) == {method.value for method in ThresholdMethod}
    assert data["n_held_out"] == 10
    assert data["config"] == ThresholdConfig().to_dict()
    assert json.loads(json.dumps(data)) == data


def test_stored_thresholds_missing_a_method_are_refused():
    data = thresholds_of(np.arange(10.0)).to_dict()
    del data["offsets"]["moving_average"]
    with pytest.raises(ValueError, match="missing for moving_average"):
        DetectorThresholds.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantile", 1.0),
        ("target_fpr", 0.0),
        ("fleet_fpr_budget", 1.5),
        ("moving_average_window", 0),
        ("std_multiplier", -1.0),
    ],
)
def test_an_out_of_range_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ThresholdConfig(**{field: value})


@pytest.mark.parametrize("scores", [np.arange(5.0), np.zeros((1, 2)), np.array([[0.0], [np.nan]])])
def test_scores_that_are_not_a_finite_matrix_of_two_rows_or_more_are_refused(scores):
    with pytest.raises(ValueError, match="scores"):
        compute_thresholds(scores)
