"""Small, fast detector fleets and a trained version for tests that need a model but not a good one."""

from __future__ import annotations

from shared.config import DetectorConfig, StreamSettings
from shared.streams.metrics.stream import METRICS
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import TrainingData, TrainingResult, train_round
from shared.training_data import training_data_from_payloads

SMALL_DETECTORS = [
    DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 30, "random_state": 0}),
    DetectorConfig(name="robust_z", kind="robust_zscore"),
]


def train_small(
    events: int = 6_000, seed: int = 31, detectors: list[DetectorConfig] = SMALL_DETECTORS
) -> TrainingResult:
    """A version trained on generated data; the loose budget makes sure some events alert."""
    data = generate_transactions(GeneratorSpec(users=events // 10, events=events, anomaly_rate=0.03, seed=seed))
    settings = StreamSettings(detectors=detectors, fleet_fpr_budget=0.02, shadow_floor_auc=0.0)
    return train_round(TrainingData(data.transaction_columns(), data.is_anomaly, "test"), settings, TRANSACTIONS, None)


def train_small_metrics(readings: int = 2_400, pumps: int = 8, seed: int = 12) -> TrainingResult:
    """A sensor-metrics version of the stream's default detectors, trained on labelled synthetic pumps."""
    generated = METRICS.synthetic(events=readings, entities=pumps, anomaly_rate=0.04, seed=seed)
    data = training_data_from_payloads(METRICS, generated.payloads, "test", 1.0, readings, generated.labels())
    return train_round(data, StreamSettings().completed(METRICS), METRICS, None)
