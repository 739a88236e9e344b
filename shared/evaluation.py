"""How well each detector, and the fleet's alerting rule, separate anomalies on a labelled set.

Seed 000 evaluates the detectors on held-out labelled data, compares them and names the weakest.
Ranking quality comes from the scores (ROC AUC; PR AUC as average precision, which does not
interpolate optimistically between operating points); operating quality from the active thresholds
(precision, recall, F1 and the confusion counts). The fleet is the rule the workers apply: an event
alerts when any non-shadow detector says -1. For its AUCs the fleet's score is the minimum, over
those detectors, of each one's decision `score - offset` divided by its robust spread on the
evaluation set: detectors on different scales become comparable, and the fleet score is negative
exactly when the rule alerts. A version with a combination (`shared.detectors.combination`) alerts by it
instead: given one, the fleet's score and rule are the combination's.

>>> evaluation = evaluate_fleet(
...     y_true=[0, 0, 0, 1],
...     scores={"forest": [0.3, 0.2, 0.25, -0.4], "baseline": [-1.0, -1.2, -3.0, -1.1]},
...     offsets={"forest": 0.0, "baseline": -2.0},
... )
>>> evaluation.weakest_detector
'baseline'
>>> evaluation.fleet.precision, evaluation.fleet.recall
(0.5, 1.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from shared.detectors.combination import ScoreCombination
from shared.detectors.robust_zscore import robust_location_scale
from shared.sorted_runs import rank_within_runs
from shared.thresholds import DetectorThresholds

RATE_METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1")
"""The metrics in [0, 1] that a comparison reports the change of."""

METRIC_HEADERS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "precision": "precision", "recall": "recall", "f1": "F1"}

HISTORY_FOR_RECALL = 3
"""Earlier events of its entity that an anomaly needs to count as visible: with fewer, there is no behaviour
for it to depart from (a user's first transactions), so no detector of departures can see it."""

UNNAMED_KIND = "unnamed"
"""The kind of a labelled anomaly whose label names none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionMetrics:
    """One detector's (or the fleet's) quality on a labelled set; positives are anomalies."""

    roc_auc: float
    pr_auc: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    @classmethod
    def measure(
        cls, is_anomaly: NDArray[np.bool_], anomaly_scores: NDArray[np.float64], flagged: NDArray[np.bool_]
    ) -> DetectionMetrics:
        """Metrics of `anomaly_scores` (higher = more anomalous) and of the rows a threshold `flagged`."""
        true_positives = int(np.count_nonzero(flagged & is_anomaly))
        false_positives = int(np.count_nonzero(flagged & ~is_anomaly))
        false_negatives = int(np.count_nonzero(~flagged & is_anomaly))
        return cls(
            roc_auc=float(roc_auc_score(is_anomaly, anomaly_scores)),
            pr_auc=float(average_precision_score(is_anomaly, anomaly_scores)),
            precision=_ratio(true_positives, true_positives + false_positives),
            recall=_ratio(true_positives, true_positives + false_negatives),
            f1=_ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives),
            true_positives=true_positives,
            false_positives=false_positives,
            true_negatives=int(np.count_nonzero(~flagged & ~is_anomaly)),
            false_negatives=false_negatives,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectionMetrics:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class KindRecall:
    """The fleet's catch among one kind of labelled anomaly: all of them, and those whose entity had history."""

    anomalies: int
    caught: int
    with_history: int  # anomalies whose entity had at least HISTORY_FOR_RECALL earlier events
    caught_with_history: int

    @property
    def recall(self) -> float:
        return _ratio(self.caught, self.anomalies)

    @property
    def recall_with_history(self) -> float:
        return _ratio(self.caught_with_history, self.with_history)


def earlier_event_counts(entities: np.ndarray, times: np.ndarray) -> np.ndarray:
    """How many events of the same entity come before each event (by time, then position) in these rows.

    >>> earlier_event_counts(np.array(["a", "b", "a", "a"], dtype=object), np.array([5.0, 1.0, 2.0, 9.0])).tolist()
    [1, 0, 0, 2]
    """
    _, entity = np.unique(entities, return_inverse=True)
    entity = entity.reshape(-1)
    order = np.lexsort((times, entity))  # stable: equal times keep their positions
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = rank_within_runs(entity[order])
    return counts


def recall_by_kind(kinds: ArrayLike, earlier_events: ArrayLike, caught: ArrayLike) -> dict[str, KindRecall]:
    """Per kind of these anomalies (one row each), and over all of them under "all kinds", what the fleet caught.

    >>> by_kind = recall_by_kind(["burst", "burst", "", None], [0, 5, 9, 1], [False, True, True, False])
    >>> by_kind["burst"].recall, by_kind["burst"].recall_with_history, by_kind["unnamed"].anomalies
    (0.5, 1.0, 2)
    """
    kind = np.array([name or UNNAMED_KIND for name in np.asarray(kinds, dtype=object).tolist()], dtype=object)
    visible = np.asarray(earlier_events) >= HISTORY_FOR_RECALL
    hit = np.asarray(caught, dtype=bool)
    masks = {str(name): kind == name for name in sorted(set(kind.tolist()))} | {"all kinds": np.ones(kind.size, bool)}
    return {
        name: KindRecall(
            anomalies=int(mask.sum()),
            caught=int((mask & hit).sum()),
            with_history=int((mask & visible).sum()),
            caught_with_history=int((mask & visible & hit).sum()),
        )
        for name, mask in masks.items()
    }


@dataclass(frozen=True, slots=True)
class FleetEvaluation:
    """Every detector's metrics, the fleet rule's, which detectors were only shadowing, and, when the labels
    name kinds, the fleet's recall per kind."""

    detectors: Mapping[str, DetectionMetrics]
    fleet: DetectionMetrics
    shadow: frozenset[str] = frozenset()
    combined: bool = False  # the fleet is the combined score (`shared.detectors.combination`), not "any −1"
    by_kind: Mapping[str, KindRecall] = dataclasses.field(default_factory=dict)
    specialists: frozenset[str] = frozenset()  # the combination's; they rank only their own kind of anomaly

    @property
    def weakest_detector(self) -> str:
        """Lowest ROC AUC, ties broken by lower F1, among the detectors other than specialists (shadows included)."""
        judged = [name for name in self.detectors if name not in self.specialists] or list(self.detectors)
        return min(judged, key=lambda name: (self.detectors[name].roc_auc, self.detectors[name].f1, name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values for the model manifest."""
        return {
            "detectors": {name: metrics.to_dict() for name, metrics in self.detectors.items()},
            "fleet": self.fleet.to_dict(),
            "shadow": sorted(self.shadow),
            "weakest_detector": self.weakest_detector,
            "combined": self.combined,
            "by_kind": {name: dataclasses.asdict(recall) for name, recall in self.by_kind.items()},
            "specialists": sorted(self.specialists),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FleetEvaluation:
        return cls(
            detectors={name: DetectionMetrics.from_dict(metrics) for name, metrics in data["detectors"].items()},
            fleet=DetectionMetrics.from_dict(data["fleet"]),
            shadow=frozenset(data["shadow"]),
            combined=bool(data.get("combined", False)),
            by_kind={name: KindRecall(**recall) for name, recall in data.get("by_kind", {}).items()},
            specialists=frozenset(data.get("specialists", ())),
        )

    def to_markdown(self) -> str:
        """The comparison table, one row per detector and one for the fleet rule."""
        rows = [
            [_row_label(name, self.shadow, self.specialists), *_metric_cells(metrics)]
            for name, metrics in self.detectors.items()
        ]
        rows.append([_fleet_label(self), *_metric_cells(self.fleet)])
        weakest = self.weakest_detector
        text = (
            _markdown_table(["detector", *METRIC_HEADERS.values(), "TP", "FP", "TN", "FN"], rows)
            + f"\n\nWeakest detector: {weakest} (ROC AUC {self.detectors[weakest].roc_auc:.3f}).\n"
        )
        if not self.by_kind:
            return text
        headers = ["anomaly kind", "anomalies", "fleet recall", f"with ≥ {HISTORY_FOR_RECALL} earlier events", "recall"]
        kinds = [
            [name, str(r.anomalies), f"{r.recall:.3f}", str(r.with_history), f"{r.recall_with_history:.3f}"]
            for name, r in self.by_kind.items()
        ]
        return text + "\n" + _markdown_table(headers, kinds) + "\n"


def evaluate_fleet(
    y_true: ArrayLike,
    scores: Mapping[str, ArrayLike],
    offsets: Mapping[str, float],
    *,
    shadow: Collection[str] = (),
    combination: ScoreCombination | None = None,
    specialists: Collection[str] = (),
    kinds: ArrayLike | None = None,
    earlier_events: ArrayLike | None = None,
) -> FleetEvaluation:
    """Evaluate each detector and the fleet rule on a labelled set (`y_true` 1 = anomaly).

    `scores[name]` is the detector's `score_samples` of the set and `offsets[name]` its active
    operating point (`offset_`); a shadow detector is measured but takes no part in the fleet rule.
    With a `combination`, the fleet is its score and its offset. `specialists` (and the combination's) are
    marked in the report and never named the weakest. With each row's anomaly `kinds` (labels'
    `anomaly_kind`) and the number of `earlier_events` of its entity, the fleet's recall per kind.
    """
    is_anomaly = _binary_labels(y_true)
    if set(scores) != set(offsets):
        raise ValueError(f"scores and offsets name different detectors: {sorted(scores)} vs {sorted(offsets)}")
    if unknown := sorted(set(shadow) - set(scores)):
        raise ValueError(f"shadow names detectors that were not scored: {unknown}")
    alerting = [name for name in scores if name not in shadow]
    if not alerting:
        raise ValueError("the fleet rule needs at least one detector that is not a shadow")

    decisions = {name: _decisions(name, scores[name], offsets[name], is_anomaly.size) for name in scores}
    detectors = {
        name: DetectionMetrics.measure(is_anomaly, -decision, decision < 0.0) for name, decision in decisions.items()
    }
    if combination is not None:
        member_scores = np.column_stack([np.asarray(scores[name], dtype=np.float64) for name in combination.names])
        fleet_score = combination.score_samples(member_scores) - combination.offset
    else:
        alerting_decisions = np.column_stack([decisions[name] for name in alerting])
        _, spread = robust_location_scale(alerting_decisions)
        fleet_score = np.min(alerting_decisions / spread, axis=1)
    by_kind = {}
    if kinds is not None:
        if earlier_events is None:
            raise ValueError("the recall per kind needs each row's earlier_events")
        anomalous = np.flatnonzero(is_anomaly)
        by_kind = recall_by_kind(
            np.asarray(kinds, dtype=object)[anomalous],
            np.asarray(earlier_events)[anomalous],
            fleet_score[anomalous] < 0,
        )
    return FleetEvaluation(
        detectors=detectors,
        fleet=DetectionMetrics.measure(is_anomaly, -fleet_score, fleet_score < 0.0),
        shadow=frozenset(shadow),
        combined=combination is not None,
        by_kind=by_kind,
        specialists=frozenset(specialists) | (combination.specialists if combination is not None else frozenset()),
    )


def threshold_method_rates(
    y_true: ArrayLike, scores: NDArray[np.float64], names: Sequence[str], thresholds: Mapping[str, DetectorThresholds]
) -> dict[str, dict[str, dict[str, float]]]:
    """For each detector and threshold method, the false-positive rate on the normal rows and the recall on the
    anomalies if that method were active: what a person reads before picking one (`models thresholds`).

    `scores` holds the detectors' `score_samples` of a labelled set, one column per name.

    >>> from shared.thresholds import compute_thresholds
    >>> (held_out,) = compute_thresholds(-np.arange(1.0, 101.0)[:, None])
    >>> scores = np.array([[-1.0], [-50.0], [-99.0], [-200.0]])
    >>> rates = threshold_method_rates([0, 0, 0, 1], scores, ["d"], {"d": held_out})
    >>> rates["d"]["quantile"], rates["d"]["min"]
    ({'fpr': 0.333333, 'recall': 1.0}, {'fpr': 0.666667, 'recall': 1.0})
    """
    is_anomaly = _binary_labels(y_true)
    return {
        name: {
            method.value: {
                "fpr": round(float(np.mean(flagged[~is_anomaly])), 6),
                "recall": round(float(np.mean(flagged[is_anomaly])), 6),
            }
            for method, offset in thresholds[name].offsets.items()
            for flagged in [scores[:, j] < offset]
        }
        for j, name in enumerate(names)
    }


def compare_evaluations(baseline: FleetEvaluation, candidate: FleetEvaluation) -> dict[str, Any]:
    """`candidate - baseline` of every rate metric, for the fleet and each detector both evaluated."""
    return {
        "fleet": _metric_deltas(baseline.fleet, candidate.fleet),
        "detectors": {
            name: _metric_deltas(metrics, candidate.detectors[name])
            for name, metrics in baseline.detectors.items()
            if name in candidate.detectors
        },
    }


def render_comparison(
    baseline: FleetEvaluation, candidate: FleetEvaluation, *, baseline_label: str = "A", candidate_label: str = "B"
) -> str:
    """A markdown table of `baseline → candidate (delta)` per metric, for `fleetwatch models compare`."""
    pairs = [
        (name, metrics, candidate.detectors[name])
        for name, metrics in baseline.detectors.items()
        if name in candidate.detectors
    ]
    pairs.append((_fleet_label(candidate), baseline.fleet, candidate.fleet))
    rows = [
        [
            label,
            *(_change(getattr(before, metric), getattr(after, metric)) for metric in RATE_METRICS),
        ]
        for label, before, after in pairs
    ]
    notes = [f"Each cell reads {baseline_label} → {candidate_label} (change)."]
    notes += [
        f"Only in {label}: {', '.join(names)}."
        for label, names in (
            (baseline_label, sorted(set(baseline.detectors) - set(candidate.detectors))),
            (candidate_label, sorted(set(candidate.detectors) - set(baseline.detectors))),
        )
        if names
    ]
    notes.append(
        f"Weakest detector: {baseline.weakest_detector} in {baseline_label}, "
        f"{candidate.weakest_detector} in {candidate_label}."
    )
    text = _markdown_table(["detector", *METRIC_HEADERS.values()], rows) + "\n\n" + "\n".join(notes) + "\n"
    kinds = [name for name in baseline.by_kind if name in candidate.by_kind]
    if not kinds:
        return text
    headers = ["anomaly kind", "anomalies", "fleet recall", f"recall, ≥ {HISTORY_FOR_RECALL} earlier events"]
    kind_rows = [
        [
            name,
            str(candidate.by_kind[name].anomalies),
            _change(baseline.by_kind[name].recall, candidate.by_kind[name].recall),
            _change(baseline.by_kind[name].recall_with_history, candidate.by_kind[name].recall_with_history),
        ]
        for name in kinds
    ]
    return text + "\n" + _markdown_table(headers, kind_rows) + "\n"


def _change(before: float, after: float) -> str:
    return f"{before:.3f} → {after:.3f} ({after - before:+.3f})"


def _binary_labels(y_true: ArrayLike) -> NDArray[np.bool_]:
    labels = np.asarray(y_true)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError("y_true must be a 1-D array of 0 (normal) and 1 (anomaly)")
    if np.unique(labels).size != 2:
        raise ValueError("y_true must contain both normal rows and anomalies to evaluate on")
    return labels == 1


def _decisions(name: str, scores: ArrayLike, offset: float, n_rows: int) -> NDArray[np.float64]:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (n_rows,):
        raise ValueError(f"scores of {name!r} have shape {values.shape}, expected ({n_rows},) like y_true")
    if not (np.isfinite(values).all() and np.isfinite(offset)):
        raise ValueError(f"scores and offset of {name!r} must be finite")
    return values - offset


def _metric_deltas(before: DetectionMetrics, after: DetectionMetrics) -> dict[str, float]:
    return {metric: getattr(after, metric) - getattr(before, metric) for metric in RATE_METRICS}


def _ratio(numerator: int, denominator: int) -> float:
    """A rate that is 0 when nothing was counted, as scikit-learn's `zero_division=0`."""
    return numerator / denominator if denominator else 0.0


def _fleet_label(evaluation: FleetEvaluation) -> str:
    return "**fleet** (combined)" if evaluation.combined else "**fleet** (any −1)"


def _row_label(name: str, shadow: Collection[str], specialists: Collection[str]) -> str:
    marks = [mark for mark, on in (("specialist", name in specialists), ("shadow", name in shadow)) if on]
    return f"{name} ({', '.join(marks)})" if marks else name


def _metric_cells(metrics: DetectionMetrics) -> list[str]:
    return [f"{getattr(metrics, metric):.3f}" for metric in RATE_METRICS] + [
        str(count)
        for count in (
            metrics.true_positives,
            metrics.false_positives,
            metrics.true_negatives,
            metrics.false_negatives,
        )
    ]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---", *["---:"] * (len(header) - 1)], *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
