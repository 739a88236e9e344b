"""The fleet's combination: calibrated surprises, consensus weights, label-chosen members, in the manifest."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from structlog.testing import capture_logs

from shared.config import DetectorConfig, StreamSettings
from shared.detectors.combination import (
    LABELS_AT_BUDGET,
    LABELS_AT_PRECISION_FLOOR,
    ScoreCombination,
    fit_combination,
    floor_threshold,
)
from shared.evaluation import FleetEvaluation
from shared.model_version import DeployedVersion, Manifest
from shared.scoring import score_batch
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import (
    TrainingData,
    select_members_by_labels,
    time_ordered_split,
    train_round,
)
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


def graded_anomalies(seed: int, n_normal: int = 20_000, n_anomalous: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two members that share a signal; the anomalies shifted along it by a spread of amounts, some barely."""
    rng = np.random.default_rng(seed)
    normal_signal, anomalous_signal = (
        rng.normal(size=n_normal),
        rng.normal(size=n_anomalous) + rng.uniform(1, 5, n_anomalous),
    )

    def members(signal: np.ndarray) -> np.ndarray:
        return np.column_stack(
            [-signal - 0.3 * rng.normal(size=signal.size), -signal - 0.3 * rng.normal(size=signal.size)]
        )

    return members(normal_signal), members(anomalous_signal)


def alert_counts(combination: ScoreCombination, normal: np.ndarray, anomalous: np.ndarray) -> tuple[int, int]:
    return (
        int(np.count_nonzero(combination.score_samples(anomalous) < combination.offset)),
        int(np.count_nonzero(combination.score_samples(normal) < combination.offset)),
    )


def test_a_precision_floor_catches_more_than_the_budget_and_its_precision_holds_on_new_rows() -> None:
    normal, anomalous = graded_anomalies(seed=11)
    names = ["a", "b"]
    combination = fit_combination(normal, names, fpr_budget=0.0005)
    at_budget = select_members_by_labels(combination, normal, anomalous, names, fpr_budget=0.0005)
    at_floor = select_members_by_labels(combination, normal, anomalous, names, 0.0005, precision_floor=0.5)
    assert at_budget.criterion == LABELS_AT_BUDGET and at_floor.criterion == LABELS_AT_PRECISION_FLOOR
    caught_at_budget, _ = alert_counts(at_budget, normal, anomalous)
    caught, false_alarms = alert_counts(at_floor, normal, anomalous)
    assert caught > 1.2 * caught_at_budget
    assert caught / (caught + false_alarms) >= 0.5
    new_normal, new_anomalous = graded_anomalies(seed=111)  # the same distribution, rows not chosen on
    caught, false_alarms = alert_counts(at_floor, new_normal, new_anomalous)
    assert caught / (caught + false_alarms) >= 0.45
    assert caught > 1.2 * alert_counts(at_budget, new_normal, new_anomalous)[0]


def test_a_floor_met_only_by_a_handful_of_rows_falls_back_to_the_budget() -> None:
    normal, anomalous = graded_anomalies(seed=13)
    names = ["a", "b"]
    combination = fit_combination(normal, names, fpr_budget=0.001)
    beyond = np.argsort(combination.score_samples(anomalous))
    few, twelve = anomalous[beyond[:5]], anomalous[beyond[:12]]
    assert combination.score_samples(twelve).max() < combination.score_samples(normal).min()  # beyond every normal
    chosen = select_members_by_labels(combination, normal, few, names, 0.001, precision_floor=0.8)
    assert chosen.criterion == LABELS_AT_BUDGET  # five of five: a 95 % lower bound of 0.65, under the floor
    assert chosen.offset == select_members_by_labels(combination, normal, few, names, 0.001).offset
    chosen = select_members_by_labels(combination, normal, twelve, names, 0.001, precision_floor=0.8)
    assert chosen.criterion == LABELS_AT_PRECISION_FLOOR  # twelve of twelve: 0.82
    assert alert_counts(chosen, normal, twelve) == (12, 0)


def with_a_specialist(n_rows: int = 4000, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows of two agreeing members and one feature's own detector; anomalies only that feature shows."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n_rows)
    normal = np.column_stack([-signal, -signal - 0.2 * rng.normal(size=n_rows), -np.abs(rng.normal(size=n_rows))])
    anomalous = np.column_stack([rng.normal(size=(40, 2)), np.full(40, -6.0)])
    return normal, anomalous


def test_a_specialist_alerts_alone_where_its_vote_would_be_drowned() -> None:
    normal, anomalous = with_a_specialist()
    names = ["a", "b", "hour"]
    voted = fit_combination(normal, names, fpr_budget=0.005)
    alone = fit_combination(normal, names, fpr_budget=0.005, specialists=["hour"])
    assert voted.weights["hour"] == 0.0  # it disagrees with the pair, so the consensus drops it
    assert alone.weights == {"a": pytest.approx(0.5, abs=0.05), "b": pytest.approx(0.5, abs=0.05), "hour": 1.0}
    assert np.mean(voted.score_samples(anomalous) < voted.offset) < 0.2
    assert np.mean(alone.score_samples(anomalous) < alone.offset) == 1.0
    assert np.mean(alone.score_samples(normal) < alone.offset) <= 0.005  # the one offset still meets the budget
    # the combined surprise is the larger of the pair's weighted sum and the specialist's own
    surprises = alone.surprises(normal)
    expected = np.maximum(alone.weights["a"] * surprises[:, 0] + alone.weights["b"] * surprises[:, 1], surprises[:, 2])
    np.testing.assert_allclose(-alone.score_samples(normal), expected)


def test_specialists_round_trip_and_a_combination_from_before_them_has_none() -> None:
    normal, _ = with_a_specialist()
    combination = fit_combination(normal, ["a", "b", "hour"], fpr_budget=0.01, specialists=["hour"])
    data = json.loads(json.dumps(combination.to_dict()))
    restored = ScoreCombination.from_dict(data)
    assert restored.specialists == {"hour"}
    np.testing.assert_array_equal(restored.score_samples(normal), combination.score_samples(normal))
    del data["specialists"]
    assert ScoreCombination.from_dict(data).specialists == frozenset()
    with pytest.raises(ValueError, match="not among the members"):
        fit_combination(normal, ["a", "b", "hour"], fpr_budget=0.01, specialists=["minute"])


def test_labels_keep_a_specialist_that_adds_catches_and_drop_one_that_adds_false_alarms() -> None:
    normal, anomalous = with_a_specialist()
    rng = np.random.default_rng(3)
    noisy = rng.normal(size=len(normal))  # a specialist whose tail holds no anomaly
    normal = np.column_stack([normal, noisy])
    anomalous = np.column_stack([anomalous, np.zeros(len(anomalous))])
    names = ["a", "b", "hour", "noise"]
    combination = fit_combination(normal, names, fpr_budget=0.01, specialists=["hour", "noise"])
    chosen = select_members_by_labels(combination, normal, anomalous, names, fpr_budget=0.01)
    assert chosen.weights["hour"] == 1.0 and chosen.weights["noise"] == 0.0
    assert chosen.specialists == {"hour", "noise"}


def test_labels_can_pair_a_specialist_with_voters_the_consensus_gave_no_weight() -> None:
    rng = np.random.default_rng(5)
    shared_noise = rng.normal(size=3000)
    normal = np.column_stack(
        [
            shared_noise,
            shared_noise + 0.1 * rng.normal(size=3000),
            rng.normal(size=3000),
            -np.abs(rng.normal(size=3000)),
        ]
    )
    sharp_sees = np.column_stack([rng.normal(size=(20, 2)), np.full(20, -6.0), np.full(20, -0.5)])
    hour_sees = np.column_stack([rng.normal(size=(20, 3)), np.full(20, -6.0)])
    names = ["echo", "echo_too", "sharp", "hour"]
    combination = fit_combination(normal, names, fpr_budget=0.01, specialists=["hour"])
    assert combination.weights["sharp"] == 0.0
    chosen = select_members_by_labels(combination, normal, np.vstack([sharp_sees, hour_sees]), names, 0.01)
    assert chosen.weights == {"echo": 0.0, "echo_too": 0.0, "sharp": 1.0, "hour": 1.0}
    for anomalies in (sharp_sees, hour_sees):
        assert np.mean(chosen.score_samples(anomalies) < chosen.offset) == 1.0


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


def test_the_roc_floor_spares_a_specialist_and_the_labels_judge_it_by_what_it_adds() -> None:
    burst = {"kind": "feature_extreme", "features": ["user_tx_last_hour"]}
    detectors = [
        *SMALL_DETECTORS,
        DetectorConfig(name="burst", specialist=True, **burst),
        DetectorConfig(name="burst_vote", **burst),  # the same evidence as a voting member
    ]
    data = generate_transactions(GeneratorSpec(users=1_000, events=10_000, anomaly_rate=0.03, seed=4))
    settings = StreamSettings(detectors=detectors, fleet_fpr_budget=0.005)  # the default floors
    labelled = TrainingData(data.transaction_columns(), data.is_anomaly, "test", anomaly_kind=data.anomaly_kind)
    result = train_round(labelled, settings, TRANSACTIONS, None)
    assert result.evaluation is not None
    assert result.evaluation.detectors["burst"].roc_auc < settings.shadow_floor_auc  # it ranks one kind only
    assert result.draft.combination is not None and result.draft.combination["specialists"] == ["burst"]
    modes = {entry.name: entry.mode for entry in result.draft.detectors}
    assert modes["burst_vote"] == "shadow" and modes["burst"] == "alerting"
    assert result.evaluation.by_kind["burst"].caught > 0
    # the report marks it and does not call it the weakest detector for ranking only its own kind
    table = result.evaluation.to_markdown()
    assert "| burst (specialist) |" in table and "| burst_vote (shadow) |" in table
    assert result.evaluation.weakest_detector == "burst_vote"
    assert FleetEvaluation.from_dict(result.evaluation.to_dict()).specialists == {"burst"}
    any_detector = StreamSettings(detectors=detectors, fleet_fpr_budget=0.005, alert_rule="any_detector")
    without_combination = train_round(labelled, any_detector, TRANSACTIONS, None).evaluation
    assert without_combination is not None and "| burst (specialist) |" in without_combination.to_markdown()


def test_with_too_few_labelled_calibration_anomalies_the_floors_still_shadow() -> None:
    data = generate_transactions(GeneratorSpec(users=1_000, events=10_000, anomaly_rate=0.03, seed=6))
    split = time_ordered_split(len(data.is_anomaly), labelled=True)
    labels = np.zeros_like(data.is_anomaly)
    labels[split.evaluation] = data.is_anomaly[split.evaluation]  # none among the calibration rows
    settings = StreamSettings(detectors=SMALL_DETECTORS, fleet_fpr_budget=0.005, shadow_floor_auc=0.999)
    result = train_round(TrainingData(data.transaction_columns(), labels, "test"), settings, TRANSACTIONS, None)
    assert result.evaluation is not None
    below = [name for name, m in result.evaluation.detectors.items() if m.roc_auc < settings.shadow_floor_auc]
    assert sorted(below) == ["iforest", "robust_z"]  # both under the floor: the better one is kept alerting
    best = max(below, key=lambda name: result.evaluation.detectors[name].roc_auc)  # type: ignore[union-attr]
    assert {entry.name: entry.mode for entry in result.draft.detectors} == {
        name: "alerting" if name == best else "shadow" for name in below
    }


def test_training_with_a_precision_floor_records_its_rule_and_catches_at_least_what_the_budget_does() -> None:
    data = generate_transactions(GeneratorSpec(users=1_000, events=20_000, anomaly_rate=0.03, seed=9))
    labelled = TrainingData(data.transaction_columns(), data.is_anomaly, "test", anomaly_kind=data.anomaly_kind)
    at_budget = train_round(labelled, StreamSettings(detectors=SMALL_DETECTORS), TRANSACTIONS, None)
    settings = StreamSettings(detectors=SMALL_DETECTORS, precision_floor=0.5)
    at_floor = train_round(labelled, settings, TRANSACTIONS, None)
    assert at_budget.draft.combination is not None and at_floor.draft.combination is not None
    assert at_budget.draft.combination["criterion"] == LABELS_AT_BUDGET
    assert at_floor.draft.combination["criterion"] == LABELS_AT_PRECISION_FLOOR
    assert at_budget.evaluation is not None and at_floor.evaluation is not None
    assert at_floor.evaluation.fleet.recall > at_budget.evaluation.fleet.recall  # held-out rows
    assert at_floor.evaluation.fleet.precision >= 0.5
    published = msgspec.json.decode(msgspec.json.encode(at_floor.draft), type=Manifest)  # as the registry writes it
    assert published.combination == at_floor.draft.combination


@settings(max_examples=200, deadline=None)
@given(
    normal=arrays(np.float64, st.integers(1, 60), elements=st.floats(-5, 5) | st.sampled_from([-np.inf, np.inf])),
    anomalous=arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 8) | st.sampled_from([-np.inf, np.inf])),
    floor=st.floats(0.05, 0.95),
)
def test_the_floors_threshold_catches_what_it_says_and_no_lower_one_keeps_the_floor(normal, anomalous, floor) -> None:
    # every finite anomalous surprise as the lowest one caught: (caught, false alarms) of alerting from it up
    cuts = [(int(np.sum(anomalous >= t)), int(np.sum(normal >= t))) for t in anomalous[np.isfinite(anomalous)]]
    kept = [caught for caught, false_alarms in cuts if _wilson_bound(caught, false_alarms) >= floor]
    found = floor_threshold(normal, anomalous, floor)
    if not kept:
        assert found is None
        return
    assert found is not None
    caught, false_alarms, threshold = found
    assert np.isfinite(threshold)
    assert (caught, false_alarms) == (int(np.sum(anomalous > threshold)), int(np.sum(normal > threshold)))
    assert _wilson_bound(caught, false_alarms) >= floor and caught == max(kept)


def _wilson_bound(caught: int, false_alarms: int) -> float:
    """The 95 % lower bound on caught / (caught + false alarms), written out for one pair."""
    n, z = caught + false_alarms, 1.645
    share = caught / n
    return (share + z * z / (2 * n) - z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_a_round_says_when_its_calibration_rows_cannot_place_the_budget() -> None:
    data = generate_transactions(GeneratorSpec(users=300, events=3_000, anomaly_rate=0.0, seed=4))
    training = TrainingData(data.transaction_columns(), None, "test")
    for budget, warned in ((0.0005, True), (0.002, False)):  # 600 calibration rows: 0.3 and 1.2 false positives
        settings = StreamSettings(detectors=SMALL_DETECTORS, fleet_fpr_budget=budget)
        with capture_logs() as logs:
            train_round(training, settings, TRANSACTIONS, None)
        warnings = [entry for entry in logs if entry["log_level"] == "warning" and "calibration rows" in entry["event"]]
        assert bool(warnings) == warned, budget
        if warned:
            assert warnings[0]["calibration_rows"] == 600 and warnings[0]["rows_needed"] == 2_000
