"""One training round, Kafka- and Redis-free: features, split, fit, thresholds, evaluation, gate.

The history is featurized once in time order (so every row's user features see only its past), then
split by time: the earliest rows train, the next calibrate the thresholds, the latest evaluate when
labels exist. With `test_part = "first"` the held-out (test) part, calibration then evaluation, is the
earliest rows instead (seed 003 holds out the first days of a sensor history). The scaler is fitted on
the training rows only (seed 003's leakage fix). With labels, every threshold method's false-positive
rate and recall on the evaluation rows are stored beside the thresholds, for the person who picks one.

The calibration scores also fit the fleet's combination (`shared.detectors.combination`): members
weighed by agreement with the consensus, without labels; with labelled anomalies among the
calibration rows, the member subset whose combination catches most of them at the budget, or, with a
`precision_floor`, the subset and threshold that catch most of them at that precision.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import os
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning

from shared.config import DetectorConfig, StreamSettings
from shared.detectors import Detector, build_detector
from shared.detectors.combination import (
    LABELS_AT_BUDGET,
    LABELS_AT_PRECISION_FLOOR,
    ScoreCombination,
    combined_surprise,
    fit_combination,
    floor_threshold,
    normalized_weights,
)
from shared.detectors.on_features import OnFeatures
from shared.errors import FleetwatchError
from shared.evaluation import FleetEvaluation, earlier_event_counts, evaluate_fleet, threshold_method_rates
from shared.feature_scaler import FeatureScaler
from shared.logs import get_logger
from shared.model_version import DeployedVersion, DetectorEntry, Manifest, ModelBundle, TrainingInfo, score_matrix
from shared.pipeline import EventColumns, Stream
from shared.registry import draft_manifest
from shared.thresholds import DetectorThresholds, ThresholdConfig, compute_thresholds

log = get_logger("fleetwatch.training")

TRAIN_SHARE, CALIBRATION_SHARE = 0.70, 0.15
"""With labels: 70 % train, 15 % calibrate, 15 % evaluate. Without: 80 % train, 20 % calibrate."""

MIN_LABELLED_ANOMALIES = 5
"""Labelled anomalies among the calibration rows needed before labels choose the combination's members."""


class TrainingError(FleetwatchError):
    pass


@dataclass(frozen=True)
class TrainingData:
    """Time-ordered events of one stream as columns, with ground truth when a labelled set is available."""

    columns: EventColumns
    is_anomaly: np.ndarray | None
    source: str
    raw_features: np.ndarray | None = None
    """The stream's features of these rows, computed upstream from the same history (the Spark path featurizes
    on its executors); None: the round computes them with `Stream.advance`."""
    anomaly_kind: np.ndarray | None = None
    """Each row's kind of anomaly as the labels name it ("" for a normal row or an unnamed kind); with it the
    evaluation reports the fleet's recall per kind."""

    def __post_init__(self) -> None:
        if len(self.columns) < 50:
            raise TrainingError(f"{len(self.columns)} events are too few to train on (need at least 50)")
        if self.is_anomaly is not None and len(self.is_anomaly) != len(self.columns):
            raise TrainingError("labels and events differ in length")
        if self.raw_features is not None and len(self.raw_features) != len(self.columns):
            raise TrainingError("features and events differ in length")
        if self.anomaly_kind is not None and (self.is_anomaly is None or len(self.anomaly_kind) != len(self.columns)):
            raise TrainingError("anomaly kinds need labels, one per event")


@dataclass(frozen=True)
class TrainingResult:
    bundle: ModelBundle
    draft: Manifest
    evaluation: FleetEvaluation | None
    raw_features: np.ndarray
    evaluation_rows: np.ndarray  # indices into the history
    columns: EventColumns  # the history, for a deployed version whose stream featurizes differently


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    calibration: np.ndarray
    evaluation: np.ndarray


def time_ordered_split(n: int, labelled: bool, test_part: Literal["first", "last"] = "last") -> Split:
    """Train, calibration and evaluation rows by time; the held-out part (calibration, then evaluation) last or first.

    >>> [len(part) for part in time_ordered_split(100, labelled=True, test_part="first").__dict__.values()]
    [70, 15, 15]
    >>> time_ordered_split(10, labelled=False, test_part="first").calibration.tolist()
    [0, 1]
    """
    train_size = int(n * (TRAIN_SHARE if labelled else 0.8))
    calibration_size = int(n * (TRAIN_SHARE + CALIBRATION_SHARE)) - train_size if labelled else n - train_size
    rows = np.arange(n)
    if test_part == "first":
        train, held_out = rows[n - train_size :], rows[: n - train_size]
    else:
        train, held_out = rows[:train_size], rows[train_size:]
    return Split(train, held_out[:calibration_size], held_out[calibration_size:])


def _fit_one(config_name: str, detector: Detector, rows: np.ndarray) -> tuple[str, Detector, float]:
    started = time.perf_counter()
    with warnings.catch_warnings():
        # max_iter is a deliberate time cap for the autoencoder, not a failure worth a warning per round.
        warnings.simplefilter("ignore", ConvergenceWarning)
        detector.fit(rows)
    return config_name, detector, time.perf_counter() - started


def detector_columns(config: DetectorConfig, stream: Stream[Any, Any]) -> list[int] | None:
    """The feature columns a detector sees: those its entry names (names or shell-style patterns such as
    `level:*`, in the entry's order, each pattern's matches in the spec's), else every one but the categorical
    ones; None when that is every column."""
    names = stream.feature_spec.names
    if config.features:
        matches = [[name for name in names if fnmatch.fnmatchcase(name, pattern)] for pattern in config.features]
        unknown = [pattern for pattern, matched in zip(config.features, matches, strict=True) if not matched]
        if unknown:
            raise TrainingError(f"detector {config.name!r} names features the {stream.name} stream lacks: {unknown}")
        chosen = list(dict.fromkeys(name for matched in matches for name in matched))
    else:
        chosen = [name for name in names if name not in stream.categorical_features]
    columns = [names.index(name) for name in chosen]
    return None if columns == list(range(len(names))) else columns


def fit_detectors(
    settings: StreamSettings,
    stream: Stream[Any, Any],
    scaled_train: np.ndarray,
    continuing: DeployedVersion | None = None,
) -> tuple[dict[str, Detector], dict[str, float]]:
    """Fit every configured detector, each on its columns, in parallel processes (one per core at most); with
    `continuing`, a detector that can goes on from that version's detector of the same name and kind."""
    unfitted = []
    for config in settings.detectors:
        detector = build_detector(config.kind, config.params)
        columns = detector_columns(config, stream)
        detector = detector if columns is None else OnFeatures(detector, columns)
        same_entry = continuing is not None and any(
            entry.name == config.name and entry.kind == config.kind for entry in continuing.manifest.detectors
        )
        if continuing is not None and same_entry:
            detector = detector.continuing(continuing.bundle.detectors[config.name])
        unfitted.append((config.name, detector))
    workers = max(1, min(len(unfitted), os.cpu_count() or 1))
    fitted = Parallel(n_jobs=workers, backend="loky")(
        delayed(_fit_one)(name, detector, scaled_train) for name, detector in unfitted
    )
    return {name: detector for name, detector, _ in fitted}, {name: seconds for name, _, seconds in fitted}


def _thresholds_with_shadows(
    calibration_scores: np.ndarray, names: list[str], shadow: set[str], config: ThresholdConfig
) -> dict[str, DetectorThresholds]:
    """Every method per detector; the fleet budget is shared only among the alerting detectors."""
    thresholds = dict(zip(names, compute_thresholds(calibration_scores, config), strict=True))
    alerting = [j for j, name in enumerate(names) if name not in shadow]
    if shadow and alerting:
        for j, fleet_only in zip(alerting, compute_thresholds(calibration_scores[:, alerting], config), strict=True):
            thresholds[names[j]] = fleet_only
    return thresholds


def _evaluate(
    scores: np.ndarray,
    names: list[str],
    thresholds: dict[str, DetectorThresholds],
    labels: np.ndarray,
    shadow: set[str],
    combination: ScoreCombination | None,
    specialists: frozenset[str] = frozenset(),
    **by_kind: np.ndarray,
) -> FleetEvaluation:
    return evaluate_fleet(
        labels,
        scores={name: scores[:, j] for j, name in enumerate(names)},
        offsets={name: thresholds[name].offset() for name in names},
        shadow=shadow,
        combination=combination,
        specialists=specialists,
        **by_kind,
    )


def select_members_by_labels(
    combination: ScoreCombination,
    normal_scores: np.ndarray,
    anomaly_scores: np.ndarray,
    candidates: list[str],
    fpr_budget: float,
    precision_floor: float | None = None,
) -> ScoreCombination:
    """The subset of `candidates`, and its offset, that labelled rows favour.

    `normal_scores` and `anomaly_scores` are the members' scores (columns in `combination.names` order) of
    one split's normal and labelled-anomalous rows, in their natural proportion. Without a
    `precision_floor`: the highest precision at the budget (the offset is placed at the budget on the
    normal rows, so the false alarms are fixed and precision rises with the anomalies caught). With one:
    the most anomalies caught at an offset where the precision's lower confidence bound stays at or
    above the floor, the fewest false alarms among equals; when no subset reaches the floor, precision at
    the budget. Ties go to the smaller subset. Voting members keep their consensus weights within a
    subset (equal if all of the subset's are 0); a specialist is on. The chosen rule is the result's
    `criterion`. Every subset is tried: 2^k - 1 combinations of precomputed surprises, seconds for k <= 10.
    """
    normal, anomalous = combination.surprises(normal_scores), combination.surprises(anomaly_scores)
    specialist = combination.specialist_mask
    at_budget: tuple[tuple[float, int, int], dict[str, float]] | None = None
    at_floor: tuple[tuple[int, int, int], dict[str, float], float] | None = None
    for size in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            weights = _subset_weights(combination, subset)
            vector = np.array(list(normalized_weights(weights, combination.names, specialist).values()))
            normal_sum = combined_surprise(normal, vector, specialist)
            anomalous_sum = combined_surprise(anomalous, vector, specialist)
            threshold = np.sort(normal_sum)[::-1][min(int(fpr_budget * normal_sum.size), normal_sum.size - 1)]
            caught = int(np.count_nonzero(anomalous_sum > threshold))
            false_alarms = int(np.count_nonzero(normal_sum > threshold))
            key = (caught / (caught + false_alarms) if caught else 0.0, caught, -size)
            if at_budget is None or key > at_budget[0]:
                at_budget = (key, weights)
            if precision_floor is not None and (found := floor_threshold(normal_sum, anomalous_sum, precision_floor)):
                floor_key = (found[0], -found[1], -size)
                if at_floor is None or floor_key > at_floor[0]:
                    at_floor = (floor_key, weights, found[2])
    assert at_budget is not None, "candidates must not be empty"
    if at_floor is None:
        chosen = combination.reweighted(at_budget[1]).at_budget(normal_scores, fpr_budget)
        return replace(chosen, criterion=LABELS_AT_BUDGET)
    chosen = combination.reweighted(at_floor[1])
    return replace(chosen, offset=-float(at_floor[2]), criterion=LABELS_AT_PRECISION_FLOOR)


def _subset_weights(combination: ScoreCombination, subset: Collection[str]) -> dict[str, float]:
    """The combination's weights of `subset` only; its voting members equal if the consensus gave them all 0."""
    weights = {name: combination.weights[name] for name in subset}
    voters = [name for name in subset if name not in combination.specialists]
    if not any(weights[name] for name in voters):
        weights |= dict.fromkeys(voters, 1.0)
    return weights


def _below_floor(evaluation: FleetEvaluation, settings: StreamSettings) -> set[str]:
    """Detectors to shadow: ROC AUC under the floor, or PR AUC under a share of the best detector's.

    PR AUC weighs the top of a detector's ranking, where a low false-positive budget puts its
    threshold: a detector weak there adds more false alarms to the any-detector rule than catches.
    Specialists are exempt: they rank only the anomalies of their kind well, by design; the labels judge
    them by what they add to the fleet (`select_members_by_labels`).
    """
    judged = {name: metrics for name, metrics in evaluation.detectors.items() if name not in evaluation.specialists}
    if not judged:
        return set()
    best_pr_auc = max(metrics.pr_auc for metrics in judged.values())
    return {
        name
        for name, metrics in judged.items()
        if metrics.roc_auc < settings.shadow_floor_auc
        or metrics.pr_auc < settings.shadow_floor_pr_auc_share * best_pr_auc
    }


def train_round(
    data: TrainingData,
    settings: StreamSettings,
    stream: Stream[Any, Any],
    parent: int | None,
    continuing: DeployedVersion | None = None,
) -> TrainingResult:
    """Train every configured detector on `data` and return the bundle and its draft manifest; with `continuing`
    (incremental training), detectors that can go on from that version's (DeepLog's network) do."""
    started = time.perf_counter()
    if data.raw_features is None:
        stream = stream.configured(settings.featurization).learn(data.columns)
        raw = stream.advance(stream.empty_states(), data.columns)[0]
    else:
        raw = data.raw_features
    labelled = data.is_anomaly is not None
    split = time_ordered_split(len(raw), labelled, settings.test_part)
    train_rows, calibration_rows = split.train[stream.training_rows(data.columns)[split.train]], split.calibration
    if not len(train_rows):
        raise TrainingError(f"no events to fit the detectors on among {len(split.train)}; give more events per entity")
    if labelled and settings.exclude_labelled_anomalies:
        assert data.is_anomaly is not None
        train_rows = train_rows[~data.is_anomaly[train_rows]]
        calibration_rows = calibration_rows[~data.is_anomaly[calibration_rows]]
    if len(calibration_rows) < 2:
        raise TrainingError("the calibration split is empty; give more events")

    categorical = [stream.feature_spec.names.index(name) for name in stream.categorical_features]
    scaler = FeatureScaler(categorical).fit(raw[train_rows])
    detectors, fit_seconds = fit_detectors(settings, stream, scaler.transform(raw[train_rows]), continuing)
    names = [config.name for config in settings.detectors]
    calibration_scores = score_matrix(detectors, names, scaler.transform(raw[calibration_rows]))
    config = settings.threshold_config()
    if config.fleet_fpr_budget * len(calibration_rows) < 1:
        log.warning(
            "too few calibration rows to place the fleet's false-positive budget: the threshold is the most "
            "anomalous calibration row's, so anomalies among those rows do not alert; train on more history, "
            "or raise fleet_fpr_budget",
            stream=stream.name,
            calibration_rows=len(calibration_rows),
            fleet_fpr_budget=config.fleet_fpr_budget,
            rows_needed=math.ceil(1 / config.fleet_fpr_budget),
        )

    evaluation: FleetEvaluation | None = None
    method_rates: dict[str, Any] = {}
    specialists = [config.name for config in settings.detectors if config.specialist]
    combination = fit_combination(calibration_scores, names, config.fleet_fpr_budget, specialists)
    shadow = {name for name in names if combination.weights[name] == 0.0}
    thresholds = _thresholds_with_shadows(calibration_scores, names, shadow, config)
    if labelled and len(split.evaluation):
        assert data.is_anomaly is not None
        labels = data.is_anomaly[split.evaluation]
        if labels.any() and not labels.all():
            evaluation_scores = score_matrix(detectors, names, scaler.transform(raw[split.evaluation]))
            anomalous_calibration = split.calibration[data.is_anomaly[split.calibration]]
            labelled_calibration = len(anomalous_calibration) >= MIN_LABELLED_ANOMALIES
            if labelled_calibration:  # the floors and the members are chosen on them, the evaluation stays held out
                anomaly_scores = score_matrix(detectors, names, scaler.transform(raw[anomalous_calibration]))
                normal_scores = calibration_scores[~data.is_anomaly[calibration_rows]]
                judged_scores = np.vstack([normal_scores, anomaly_scores])
                judged_labels = np.r_[np.zeros(len(normal_scores), bool), np.ones(len(anomaly_scores), bool)]
            else:  # too few labelled anomalies among the calibration rows: the floors judge the evaluation rows
                judged_scores, judged_labels = evaluation_scores, labels
            judged = _evaluate(judged_scores, names, thresholds, judged_labels, shadow, combination)
            floor = _below_floor(judged, settings)
            voting = [name for name in names if name not in combination.specialists]
            if voting and floor >= set(voting):  # keep the best general detector, not the specialists alone
                floor.discard(max(voting, key=lambda n: judged.detectors[n].roc_auc))
            candidates = [name for name in names if name not in floor]
            if labelled_calibration:
                combination = select_members_by_labels(
                    combination,
                    normal_scores,
                    anomaly_scores,
                    candidates,
                    config.fleet_fpr_budget,
                    settings.precision_floor if settings.alert_rule == "combined" else None,  # it sets the offset
                )
            else:  # too few labelled anomalies to choose members by: the floors alone shadow
                combination = combination.reweighted(_subset_weights(combination, candidates)).at_budget(
                    calibration_scores, config.fleet_fpr_budget
                )
            shadow = {name for name in names if combination.weights[name] == 0.0}
            thresholds = _thresholds_with_shadows(calibration_scores, names, shadow, config)
            rule = combination if settings.alert_rule == "combined" else None
            by_kind = {}
            if data.anomaly_kind is not None:
                by_kind = {
                    "kinds": data.anomaly_kind[split.evaluation],
                    "earlier_events": earlier_event_counts(data.columns.entity, data.columns.event_time_s)[
                        split.evaluation
                    ],
                }
            evaluation = _evaluate(
                evaluation_scores, names, thresholds, labels, shadow, rule, combination.specialists, **by_kind
            )
            method_rates = threshold_method_rates(labels, evaluation_scores, names, thresholds)

    entries = [
        DetectorEntry(
            name=c.name,
            kind=c.kind,
            params=c.params,
            features=c.features,
            mode="shadow" if c.name in shadow else "alerting",
            thresholds=thresholds[c.name].to_dict(),
            training_seconds=round(fit_seconds[c.name], 3),
        )
        for c in settings.detectors
    ]
    timestamps = data.columns.event_time_s
    draft = draft_manifest(
        stream.name,
        parent,
        feature_spec_version=stream.feature_spec.version,
        feature_names=list(stream.feature_spec.names),
        detectors=entries,
        training=TrainingInfo(
            source=data.source,
            window_start=_iso(timestamps.min()),
            window_end=_iso(timestamps.max()),
            rows_train=len(train_rows),
            rows_calibration=len(calibration_rows),
            rows_evaluation=len(split.evaluation) if evaluation else 0,
            seconds=round(time.perf_counter() - started, 3),
        ),
        evaluation=evaluation.to_dict() | {"threshold_methods": method_rates} if evaluation else None,
        combination=combination.to_dict() if settings.alert_rule == "combined" else None,
    )
    return TrainingResult(
        ModelBundle(stream, scaler, detectors), draft, evaluation, raw, split.evaluation, data.columns
    )


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(epoch_s)))


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str
    deployed_metrics: dict[str, Any] | None = None


def quality_gate(
    result: TrainingResult, deployed: DeployedVersion | None, labels: np.ndarray | None, settings: StreamSettings
) -> GateDecision:
    """Refuse a candidate whose fleet metric falls below the deployed version's, on the same rows, by more
    than the margin. Without labels or a deployed version there is nothing to compare, so it passes; with labels
    whose evaluation part cannot compare (one class only), a person decides, so it does not pass."""
    if deployed is None:
        return GateDecision(True, "no deployed version that can score this data")
    if labels is None:
        return GateDecision(True, "no labelled evaluation set: the gate cannot compare and lets it pass")
    if result.evaluation is None:
        held_out = labels[result.evaluation_rows]
        return GateDecision(
            False,
            f"the labelled evaluation part ({len(held_out)} events, {int(held_out.sum())} anomalies) needs normal "
            f"and anomalous events to compare with deployed v{deployed.version}; published without deploying: "
            f"check it, then `fleetwatch models promote <this version> --stream {result.draft.stream}`",
        )
    rows = result.evaluation_rows
    raw = result.raw_features
    if deployed.stream.fingerprint != result.bundle.stream.fingerprint:  # it learned other templates, say
        raw = deployed.stream.advance(deployed.stream.empty_states(), result.columns)[0]
    scaled = deployed.bundle.scaler.transform(raw[rows])
    shadow = {e.name for e in deployed.manifest.detectors if e.mode == "shadow"}
    scores = deployed.score(scaled)
    baseline = evaluate_fleet(
        labels[rows],
        scores={name: scores[:, j] for j, name in enumerate(deployed.detector_names)},
        offsets=dict(zip(deployed.detector_names, deployed.offsets.tolist(), strict=True)),
        shadow=shadow,
        combination=deployed.combination,
    )
    metric = settings.gate_metric
    candidate_value = getattr(result.evaluation.fleet, metric)
    deployed_value = getattr(baseline.fleet, metric)
    verdict = (
        f"fleet {metric} {candidate_value:.3f} vs deployed v{deployed.version} {deployed_value:.3f} "
        f"(margin {settings.gate_margin})"
    )
    return GateDecision(candidate_value >= deployed_value - settings.gate_margin, verdict, baseline.to_dict())
