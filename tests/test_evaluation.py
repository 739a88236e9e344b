"""Fleet evaluation: per-detector and fleet-rule metrics, the weakest detector, tables and comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from shared.evaluation import (
    DetectionMetrics,
    FleetEvaluation,
    compare_evaluations,
    evaluate_fleet,
    render_comparison,
)

# Six normal rows, then two anomalies. "sharp" flags both anomalies and one normal row, "blunt"
# flags one normal row only, "shadowing" would flag everything and ranks the anomalies as most normal,
# but it is only shadowing.
Y_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1])
SCORES = {
    "sharp": np.array([0.9, 0.8, 0.7, 0.6, 0.5, -0.1, -0.8, -0.9]),
    "blunt": np.array([0.1, 0.4, -0.3, 0.5, 0.6, 0.2, 0.3, 0.35]),
    "shadowing": np.full(8, -5.0) + np.arange(8) * 0.01,
}
OFFSETS = {"sharp": 0.0, "blunt": 0.0, "shadowing": 0.0}


@pytest.fixture
def evaluation() -> FleetEvaluation:
    return evaluate_fleet(Y_TRUE, SCORES, OFFSETS, shadow={"shadowing"})


def test_a_detector_flagging_both_anomalies_and_one_normal_row_has_those_counts(evaluation):
    sharp = evaluation.detectors["sharp"]
    assert (sharp.true_positives, sharp.false_positives, sharp.true_negatives, sharp.false_negatives) == (2, 1, 5, 0)
    assert sharp.roc_auc == 1.0
    assert (sharp.precision, sharp.recall, sharp.f1) == pytest.approx((2 / 3, 1.0, 0.8))


def test_metrics_agree_with_scikit_learn(evaluation):
    for name, metrics in evaluation.detectors.items():
        flagged = (SCORES[name] < OFFSETS[name]).astype(int)
        assert metrics.roc_auc == pytest.approx(roc_auc_score(Y_TRUE, -SCORES[name]))
        assert metrics.precision == pytest.approx(precision_score(Y_TRUE, flagged, zero_division=0))
        assert metrics.recall == pytest.approx(recall_score(Y_TRUE, flagged, zero_division=0))
        assert metrics.f1 == pytest.approx(f1_score(Y_TRUE, flagged, zero_division=0))


def test_a_detector_that_flags_no_anomaly_has_zero_precision_recall_and_f1(evaluation):
    blunt = evaluation.detectors["blunt"]
    assert (blunt.precision, blunt.recall, blunt.f1) == (0.0, 0.0, 0.0)


def test_the_fleet_alerts_when_any_non_shadow_detector_says_minus_one(evaluation):
    fleet = evaluation.fleet
    # sharp flags rows 5, 6, 7 and blunt row 2; the shadow detector's flags on every row do not count.
    assert (fleet.true_positives, fleet.false_positives, fleet.true_negatives, fleet.false_negatives) == (2, 2, 4, 0)


def test_the_fleet_score_ranks_like_the_rule_it_summarises():
    rng = np.random.default_rng(0)
    y_true = np.r_[np.zeros(300, dtype=int), np.ones(30, dtype=int)]
    # Two detectors on very different scales, each seeing the anomalies.
    scores = {
        "small_scale": rng.normal(size=330) * 0.01 - 0.05 * y_true,
        "large_scale": rng.normal(size=330) * 100 - 500 * y_true,
    }
    offsets = {name: float(np.quantile(values[:300], 0.02)) for name, values in scores.items()}
    evaluation = evaluate_fleet(y_true, scores, offsets)
    assert evaluation.fleet.roc_auc > 0.95
    assert evaluation.fleet.recall >= max(metrics.recall for metrics in evaluation.detectors.values())


def test_the_weakest_detector_has_the_lowest_roc_auc_shadow_detectors_included(evaluation):
    assert evaluation.detectors["shadowing"].roc_auc == 0.0
    assert evaluation.detectors["blunt"].roc_auc == 0.5
    assert evaluation.weakest_detector == "shadowing"


def test_equal_roc_auc_is_broken_by_the_lower_f1():
    scores = {"strict": SCORES["sharp"], "lenient": SCORES["sharp"]}
    evaluation = evaluate_fleet(Y_TRUE, scores, {"strict": 0.0, "lenient": 0.55})
    assert evaluation.detectors["strict"].roc_auc == evaluation.detectors["lenient"].roc_auc
    assert evaluation.weakest_detector == "lenient"


def test_the_manifest_form_is_json_safe_and_round_trips(evaluation):
    data = json.loads(json.dumps(evaluation.to_dict()))
    assert data["weakest_detector"] == "shadowing"
    assert data["shadow"] == ["shadowing"]
    assert FleetEvaluation.from_dict(data) == evaluation


def test_the_markdown_table_has_a_row_per_detector_the_fleet_and_names_the_weakest(evaluation):
    table = evaluation.to_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| detector | ROC AUC | PR AUC | precision | recall | F1 | TP | FP | TN | FN |")
    assert "| sharp | 1.000 |" in table
    assert "| shadowing (shadow) |" in table
    assert "| **fleet** (any −1) |" in table
    assert "Weakest detector: shadowing (ROC AUC 0.000)." in table


def test_comparison_reports_candidate_minus_baseline_for_shared_detectors_and_the_fleet(evaluation):
    candidate = evaluate_fleet(Y_TRUE, {"sharp": SCORES["sharp"], "new": SCORES["sharp"]}, {"sharp": -0.5, "new": 0.0})
    deltas = compare_evaluations(evaluation, candidate)
    assert set(deltas["detectors"]) == {"sharp"}
    # Moving sharp's offset to -0.5 drops the false positive: precision 2/3 -> 1.
    assert deltas["detectors"]["sharp"]["precision"] == pytest.approx(1 / 3)
    assert deltas["detectors"]["sharp"]["roc_auc"] == 0.0
    # The fleet goes from sharp + blunt (rows 2, 5, 6, 7) to sharp + new (rows 5, 6, 7).
    assert deltas["fleet"]["precision"] == pytest.approx(2 / 3 - 1 / 2)


def test_the_comparison_table_shows_both_values_the_change_and_unmatched_detectors(evaluation):
    candidate = evaluate_fleet(Y_TRUE, {"sharp": SCORES["sharp"], "new": SCORES["sharp"]}, {"sharp": -0.5, "new": 0.0})
    table = render_comparison(evaluation, candidate, baseline_label="v1", candidate_label="v2")
    assert "| sharp | 1.000 → 1.000 (+0.000) | 1.000 → 1.000 (+0.000) | 0.667 → 1.000 (+0.333) |" in table
    assert "Only in v1: blunt, shadowing." in table
    assert "Only in v2: new." in table


@pytest.mark.parametrize(
    ("y_true", "message"),
    [([0] * 8, "both normal rows and anomalies"), ([0, 1, 2, 0, 0, 0, 1, 1], "0 \\(normal\\) and 1")],
)
def test_labels_that_cannot_be_evaluated_are_refused(y_true, message):
    with pytest.raises(ValueError, match=message):
        evaluate_fleet(y_true, SCORES, OFFSETS)


def test_a_fleet_of_shadows_only_is_refused():
    with pytest.raises(ValueError, match="not a shadow"):
        evaluate_fleet(Y_TRUE, SCORES, OFFSETS, shadow=set(SCORES))


def test_scores_and_offsets_for_different_detectors_are_refused():
    with pytest.raises(ValueError, match="different detectors"):
        evaluate_fleet(Y_TRUE, SCORES, {"sharp": 0.0})


def test_scores_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="'sharp'"):
        evaluate_fleet(Y_TRUE, {"sharp": SCORES["sharp"][:5]}, {"sharp": 0.0})


def test_detection_metrics_round_trip_through_a_plain_dict(evaluation):
    assert DetectionMetrics.from_dict(evaluation.fleet.to_dict()) == evaluation.fleet


def test_recall_per_kind_counts_what_the_fleet_caught_in_all_and_among_anomalies_with_history():
    # A third anomaly the fleet misses, of a user with no earlier events; the two caught ones have history.
    y_true = np.r_[Y_TRUE, 1]
    scores = {name: np.r_[values, 0.9] for name, values in SCORES.items()}
    kinds = ["", "", "", "", "", "", "burst", "new_ip_country", "burst"]
    evaluation = evaluate_fleet(
        y_true, scores, OFFSETS, shadow={"shadowing"}, kinds=kinds, earlier_events=[0, 0, 0, 0, 0, 0, 3, 7, 0]
    )
    burst, everything = evaluation.by_kind["burst"], evaluation.by_kind["all kinds"]
    assert (burst.anomalies, burst.caught, burst.with_history, burst.caught_with_history) == (2, 1, 1, 1)
    assert burst.recall == 0.5 and burst.recall_with_history == 1.0
    assert everything.recall == pytest.approx(evaluation.fleet.recall) and everything.with_history == 2
    assert FleetEvaluation.from_dict(json.loads(json.dumps(evaluation.to_dict()))) == evaluation
    table = evaluation.to_markdown()
    assert "| anomaly kind | anomalies | fleet recall | with ≥ 3 earlier events | recall |" in table
    assert "| burst | 2 | 0.500 | 1 | 1.000 |" in table
    with pytest.raises(ValueError, match="earlier_events"):
        evaluate_fleet(y_true, scores, OFFSETS, shadow={"shadowing"}, kinds=kinds)


def test_an_evaluation_stored_before_kinds_were_reported_still_loads(evaluation):
    data = evaluation.to_dict()
    del data["by_kind"]
    assert FleetEvaluation.from_dict(data) == evaluation and "anomaly kind" not in evaluation.to_markdown()


def test_the_comparison_shows_the_recall_per_kind_when_both_evaluations_have_it():
    y_true = np.r_[Y_TRUE, 1]
    scores = {name: np.r_[values, 0.9] for name, values in SCORES.items()}
    kinds, earlier = ["", "", "", "", "", "", "burst", "burst", "new_ip_country"], [0] * 6 + [5, 5, 0]
    sharp_only = evaluate_fleet(
        y_true, scores, OFFSETS, shadow={"shadowing", "blunt"}, kinds=kinds, earlier_events=earlier
    )
    both = evaluate_fleet(y_true, scores, OFFSETS, shadow={"shadowing"}, kinds=kinds, earlier_events=earlier)
    table = render_comparison(sharp_only, both)
    assert "| anomaly kind | anomalies | fleet recall | recall, ≥ 3 earlier events |" in table
    burst = both.by_kind["burst"].recall
    assert f"| burst | 2 | {sharp_only.by_kind['burst'].recall:.3f} → {burst:.3f}" in table
    assert "anomaly kind" not in render_comparison(sharp_only, evaluate_fleet(y_true, scores, OFFSETS))
