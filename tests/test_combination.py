"""The fleet's combination: calibrated surprises, consensus weights, label-chosen members, in the manifest."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from shared.config import DetectorConfig
from shared.detectors.combination import ScoreCombination, fit_combination
from shared.model_version import DeployedVersion, Manifest
from shared.scoring import score_batch
from shared.training import select_members_by_labels
from tests.small_models import SMALL_DETECTORS, train_small


def correlated_members(n_rows: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores (higher = more normal) of two members that share one signal, and a third of pure noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n_rows)
    return np.column_stack([-signal, -np.exp(signal), rng.normal(size=n_rows)]), signal


def test_a_calibration_rows_surprise_is_minus_log10_of_its_tail_share() -> None:
    scores, _ = correlated_members()
    combination = fit_combination(scores, ["linear", "exponential", "noise"], fpr_budget=0.01)
    surprises = combination.surprises(scores)
    for j in range(2):
        tail_share = np.argsort(np.argsort(scores[:, j])) / len(scores)  # share of rows scoring lower
        top = (tail_share < 0.1) & (tail_share >= 0.002)  # beyond the top ten rows, the grid is exact enough
        np.testing.assert_allclose(surprises[top, j], -np.log10(tail_share[top] + 1 / len(scores)), atol=0.08)
    # the same ranking for the same signal on different scales: the two members' surprises agree
    inside = np.argsort(np.argsort(scores[:, 0])) >= 10
    np.testing.assert_allclose(surprises[inside, 0], surprises[inside, 1], atol=0.08)


def test_rows_beyond_the_calibration_range_stay_ranked() -> None:
    scores, _ = correlated_members()
    combination = fit_combination(scores, ["linear", "exponential", "noise"], fpr_budget=0.01)
    beyond = np.array([[-10.0, -1e4, 0.0], [-20.0, -1e6, 0.0], [-40.0, -1e9, 0.0]])
    combined = combination.score_samples(beyond)
    assert np.all(np.diff(combined) < 0) and combined[0] < combination.score_samples(scores).min()


def test_the_offset_keeps_the_calibration_alert_rate_within_the_budget() -> None:
    scores, _ = correlated_members()
    combination = fit_combination(scores, ["linear", "exponential", "noise"], fpr_budget=0.005)
    assert np.mean(combination.score_samples(scores) < combination.offset) <= 0.005


def test_a_member_that_disagrees_with_the_consensus_is_dropped() -> None:
    scores, _ = correlated_members()
    inverted = np.column_stack([scores[:, :2], -scores[:, 0]])
    combination = fit_combination(inverted, ["a", "b", "inverted"], fpr_budget=0.01)
    assert combination.weights["inverted"] == 0.0
    assert combination.weights["a"] == pytest.approx(combination.weights["b"], abs=0.05)
    assert sum(combination.weights.values()) == pytest.approx(1.0)


def test_a_rows_combined_score_does_not_depend_on_its_batch() -> None:
    scores, _ = correlated_members()
    combination = fit_combination(scores, ["a", "b", "c"], fpr_budget=0.01)
    whole = combination.score_samples(scores)
    for rows in (slice(7, 9), slice(0, 1), slice(100, 1337)):
        np.testing.assert_array_equal(combination.score_samples(scores[rows]), whole[rows])


def test_the_combination_round_trips_through_json_unchanged() -> None:
    scores, _ = correlated_members()
    combination = fit_combination(scores, ["a", "b", "c"], fpr_budget=0.01)
    restored = ScoreCombination.from_dict(json.loads(json.dumps(combination.to_dict())))
    np.testing.assert_array_equal(restored.score_samples(scores), combination.score_samples(scores))
    assert restored.offset == combination.offset and restored.weights == combination.weights


def test_labels_choose_the_member_that_catches_the_anomalies_over_the_consensus() -> None:
    rng = np.random.default_rng(1)
    shared_noise = rng.normal(size=3000)
    # two members agree with each other on noise; only "sharp" sees the labelled anomalies
    normal = np.column_stack([shared_noise, shared_noise + 0.1 * rng.normal(size=3000), rng.normal(size=3000)])
    anomalous = np.column_stack([rng.normal(size=(30, 2)), rng.normal(size=30) - 6.0])
    names = ["echo", "echo_too", "sharp"]
    combination = fit_combination(normal, names, fpr_budget=0.01)
    assert combination.weights["sharp"] == 0.0  # without labels, the consensus follows the pair
    chosen = select_members_by_labels(combination, normal, anomalous, names, fpr_budget=0.01)
    assert chosen.weights == {"echo": 0.0, "echo_too": 0.0, "sharp": 1.0}
    assert np.mean(chosen.score_samples(anomalous) < chosen.offset) > 0.9
    assert np.mean(chosen.score_samples(normal) < chosen.offset) <= 0.01


@pytest.fixture(scope="module")
def trained():
    return train_small(events=5_000, seed=8, detectors=[*SMALL_DETECTORS, DetectorConfig(name="ecod", kind="ecod")])


def test_training_records_the_combination_and_the_workers_alert_by_it(trained) -> None:
    manifest = trained.draft
    assert manifest.combination is not None
    assert set(manifest.combination["weights"]) == {"iforest", "robust_z", "ecod"}
    assert {entry.name for entry in manifest.detectors if entry.mode == "alerting"} == {
        name for name, weight in manifest.combination["weights"].items() if weight > 0
    }
    version = DeployedVersion.assemble(msgspec.structs.replace(manifest, version=3), trained.bundle)
    assert version.combination is not None
    rows = trained.raw_features[trained.evaluation_rows]
    scored = score_batch(version, rows)
    np.testing.assert_array_equal(
        scored.alert, version.combination.score_samples(scored.scores) < version.combination.offset
    )
    assert trained.evaluation.fleet.true_positives + trained.evaluation.fleet.false_positives == scored.alert.sum()


def test_a_manifest_from_before_the_combination_loads_and_alerts_when_any_detector_fires(trained) -> None:
    encoded = json.loads(msgspec.json.encode(msgspec.structs.replace(trained.draft, version=2)))
    del encoded["combination"]
    manifest = msgspec.json.decode(json.dumps(encoded), type=Manifest)
    version = DeployedVersion.assemble(manifest, trained.bundle)
    assert version.combination is None
    scored = score_batch(version, trained.raw_features[trained.evaluation_rows])
    np.testing.assert_array_equal(scored.alert, scored.flags[:, version.alerting_mask].any(axis=1))
