"""The sensor-metrics stream (seed 003): its contract, windows, tabular files, detectors, thresholds and alerts,
and a real worker on the real broker and Redis scoring a pump fleet with injected faults."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow.csv as pacsv
import pytest
import redis
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from shared.artifact_store import RedisArtifactStore
from shared.config import DetectorConfig, StreamSettings, load_settings, topic_environment
from shared.detectors import build_detector
from shared.detectors.on_features import OnFeatures
from shared.entity_state import EntityStates
from shared.errors import FleetwatchError
from shared.event_files import read_payloads
from shared.feature_scaler import FeatureScaler
from shared.kafka_client import KafkaConnection
from shared.model_version import DeployedVersion, ModelBundle
from shared.output_records import AlertRecord, decode_output
from shared.registry import ModelRegistry
from shared.scoring import score_batch
from shared.state_store import EntityStateStore
from shared.streams.metrics.files import wide_table
from shared.streams.metrics.stream import METRICS, MetricsStream
from shared.streams.metrics.windows import MAX_SENSORS, ROW_FEATURES, MetricColumns, WindowShape
from shared.training import TrainingData, detector_columns, time_ordered_split, train_round
from shared.training_data import from_files
from tests.fleet import FLEETWATCH, QUICK_FAILOVER, event_ids, open_fleet, produce_paced
from tests.test_config import isolated  # noqa: F401 (a fixture)

WINDOW = WindowShape().size
"""The default window size, which the catalog's stream has."""


def reading(values: Any, event_id: str = "e1", timestamp: str = "2026-10-01T00:00:00Z") -> bytes:
    return msgspec.json.encode({"event_id": event_id, "asset_id": "pump-1", "timestamp": timestamp, "values": values})


def test_non_finite_or_malformed_readings_are_dead_letters_with_their_bytes() -> None:
    payloads = [
        reading({"flow": 1.5, "power": 3}),
        b'{"event_id": "e2", "asset_id": "p", "timestamp": "2026-10-01T00:00:00Z", "values": {"flow": 1e999}}',
        b'{"event_id": "e3", "asset_id": "p", "timestamp": "2026-10-01T00:00:00Z", "values": {"flow": NaN}}',
        reading({"flow": "12"}),
        reading({"flow": True}),
        reading({}),
        reading({"flow": 1.0}, timestamp="2026-10-01T00:00:00"),  # no time zone
        reading({"flow": 2e15}),
    ]
    batch = METRICS.decode(payloads)
    assert batch.positions == [0] and batch.events[0].values == {"flow": 1.5, "power": 3.0}
    assert [(e.index, e.kind.value) for e in batch.errors] == [
        (1, "schema"), (2, "not_json"), (3, "schema"), (4, "schema"), (5, "schema"), (6, "schema"), (7, "schema"),
    ]  # fmt: skip
    assert all(e.raw == payloads[e.index] for e in batch.errors)


def columns_of(payloads: list[bytes]) -> MetricColumns:
    columns = METRICS.columns(METRICS.decode(payloads).events)
    return columns.take(np.argsort(columns.event_time_s, kind="stable"))


def test_learning_takes_the_sensor_names_and_refuses_more_than_the_maximum() -> None:
    columns = columns_of(METRICS.synthetic(events=40, entities=2, anomaly_rate=0.0, seed=1).payloads)
    learned = METRICS.learn(columns)
    assert learned.sensors == tuple(sorted(learned.sensors)) and len(learned.sensors) == 6
    assert learned.fingerprint != METRICS.fingerprint
    with pytest.raises(FleetwatchError, match="featurizes with the sensors it learned"):
        METRICS.advance(METRICS.empty_states(), columns)
    wide = [reading({f"s{j}": 1.0 for j in range(MAX_SENSORS + 1)}, event_id=f"w{i}") for i in range(3)]
    with pytest.raises(FleetwatchError, match=f"at most {MAX_SENSORS} sensors.*names {MAX_SENSORS + 1}"):
        METRICS.learn(columns_of(wide))


def test_a_window_carries_missing_readings_forward_and_pads_a_new_asset_with_its_first_reading() -> None:
    typical = np.r_[4.0, 9.0, np.zeros(MAX_SENSORS - 2)]
    stream = MetricsStream(("flow", "power"), np.r_[10.0, 20.0, np.zeros(MAX_SENSORS - 2)], typical)
    columns = MetricColumns.from_values(
        ["a", "a", "b"], [0.0, 300.0, 0.0], [{"flow": 1.0}, {"power": 5.0}, {"power": 7.0}]
    )
    features, after = stream.advance(stream.empty_states(), columns)
    name = METRICS.feature_spec.names.index
    # a's first reading lacks power: the training median; its second lacks flow: the previous value
    assert features[:, name("now:s00")].tolist() == [1.0, 1.0, 10.0]
    assert features[:, name("now:s01")].tolist() == [20.0, 5.0, 7.0]
    assert features[1, name("lag7:s01")] == 20.0 and features[1, name("lag1:s01")] == 20.0
    # the padding is not a spread: a single reading has the typical one, two readings their own plus 6 typical rows
    spread = features[:, [name("logspread:s00"), name("logspread:s01")]]
    np.testing.assert_allclose(np.exp(spread[[0, 2]]), [[2.0, 3.0], [2.0, 3.0]], rtol=1e-4)
    two = (np.array([0.0, 2 * 7.5**2]) + 6 * typical[:2] * WINDOW / (WINDOW - 1)) / WINDOW  # power: 20 then 5
    np.testing.assert_allclose(np.exp(spread[1]), np.sqrt(two), rtol=1e-4)
    assert after.keys.tolist() == ["a", "b"] and after.records["rows"].shape == (2, WINDOW - 1, MAX_SENSORS)
    assert after.records["real"].tolist() == [2, 1]


def _levels_one_reading_at_a_time(readings: np.ndarray, prior: np.ndarray, memory: int) -> np.ndarray:
    """The level deviations of one asset's readings by the textbook recurrences, a reading at a time."""
    alpha, weight, mean, square = 1.0 / memory, 0.0, np.zeros(readings.shape[1]), np.zeros(readings.shape[1])
    out = np.zeros_like(readings)
    for k, x in enumerate(readings):
        if k:
            variance = np.maximum(square - mean**2, 0.0)
            blended = (weight * memory * variance + 8 * prior) / (weight * memory + 8)
            out[k] = (x - mean) / (np.sqrt(blended) + 1e-6 * (1.0 + np.abs(mean)))
        # weighted mean and mean square of all readings so far, weights alpha·(1 - alpha)^age normalised
        new_weight = (1.0 - alpha) * weight + alpha
        mean = ((1.0 - alpha) * weight * mean + alpha * x) / new_weight
        square = ((1.0 - alpha) * weight * square + alpha * x**2) / new_weight
        weight = new_weight
    return out


def test_the_level_of_interleaved_assets_in_any_batching_equals_the_reading_at_a_time_recurrence() -> None:
    rng = np.random.default_rng(5)
    assets = rng.choice(["a", "b", "c"], size=300)
    flows = np.cumsum(rng.normal(0.0, 1.0, size=300)) + 50.0
    columns = MetricColumns.from_values(assets.tolist(), np.arange(300.0).tolist(), [{"flow": v} for v in flows])
    prior = np.r_[4.0, np.zeros(MAX_SENSORS - 1)]
    stream = MetricsStream(("flow",), np.zeros(MAX_SENSORS), np.ones(MAX_SENSORS), prior,
                           shape=WindowShape(level_memory=50))  # fmt: skip
    level = stream.feature_spec.names.index("level:s00")
    whole, _ = stream.advance(stream.empty_states(), columns)
    for asset in "abc":
        mine = assets == asset
        expected = _levels_one_reading_at_a_time(flows[mine, None], prior[:1], memory=50)[:, 0]
        np.testing.assert_allclose(whole[mine, level], expected, rtol=1e-9, atol=1e-9)
    # In batches of 7, each asset's state kept as the bytes a store would keep: the same deviations.
    stored: dict[str, bytes] = {}
    parts = []
    for start in range(0, 300, 7):
        states = EntityStates.from_blobs(stream.state_layout, sorted(stored), [stored[k] for k in sorted(stored)])
        part, after = stream.advance(states, columns.take(np.arange(start, min(start + 7, 300))))
        stored |= dict(zip(after.keys.tolist(), after.blobs(), strict=True))
        parts.append(part)
    np.testing.assert_allclose(np.vstack(parts), whole, rtol=1e-9, atol=1e-9)


def test_one_assets_extreme_reading_leaves_the_other_assets_levels_exact() -> None:
    rng = np.random.default_rng(7)
    assets = np.repeat(["a", "b", "c"], 50)  # laid end to end in the batch: a's glitch comes right before b
    flows = rng.normal(10.0, 0.01, size=150)
    flows[49] = 1e12
    columns = MetricColumns.from_values(assets.tolist(), np.arange(150.0).tolist(), [{"flow": v} for v in flows])
    prior = np.r_[1e-4, np.zeros(MAX_SENSORS - 1)]
    stream = MetricsStream(("flow",), np.zeros(MAX_SENSORS), np.ones(MAX_SENSORS), prior)
    whole, after = stream.advance(stream.empty_states(), columns)
    level = stream.feature_spec.names.index("level:s00")
    for asset in "bc":
        mine = assets == asset
        expected = _levels_one_reading_at_a_time(flows[mine, None], prior[:1], memory=1000)[:, 0]
        np.testing.assert_allclose(whole[mine, level], expected, rtol=1e-9, atol=1e-9)
    variance = after.records["level_variance"][:, 0]
    np.testing.assert_allclose(variance[1:], [np.var(flows[assets == a]) for a in "bc"], rtol=1e-2)


def test_the_level_prior_is_the_variance_of_assets_that_report_a_sensor_at_least_twice() -> None:
    rng = np.random.default_rng(8)
    records, assets = [], []
    for pump in range(10):
        for _ in range(40):  # temp: only pumps 0-3 report it, with variance 4
            reading = {"flow": float(rng.normal(50.0, 1.0))}
            if pump < 4:
                reading["temp"] = float(rng.normal(60.0, 2.0))
            records.append(reading)
            assets.append(f"p{pump}")
    records += [{"flow": 50.0, "temp": 60.0}] * 30  # 30 assets of one reading each: no variance of their own
    assets += [f"single{k}" for k in range(30)]
    columns = MetricColumns.from_values(assets, np.arange(len(assets), dtype=float).tolist(), records)
    learned = METRICS.learn(columns)
    np.testing.assert_allclose(learned.level_variance[:2], [1.0, 4.0], rtol=0.35)  # flow, temp (sorted)


def test_a_level_shift_stands_out_while_it_is_new_and_fades_as_the_level_follows() -> None:
    flows = np.r_[np.full(400, 10.0), np.full(400, 14.0)] + np.random.default_rng(6).normal(0.0, 0.5, size=800)
    columns = MetricColumns.from_values(["a"] * 800, np.arange(800.0).tolist(), [{"flow": v} for v in flows])
    stream = METRICS.configured({"level_memory": 100}).learn(columns.take(np.arange(400)))
    deviation = stream.advance(stream.empty_states(), columns)[0][:, stream.feature_spec.names.index("level:s00")]
    assert np.abs(deviation[50:400]).max() < 4.5, "the steady part stays within a few standard deviations"
    assert deviation[400] > 6.0, "the first shifted reading is far from the level"
    assert np.abs(deviation[-100:]).max() < 4.5, "a few memories later the shifted level is the normal one"


def test_a_window_counts_its_real_readings_across_batches_up_to_a_full_window() -> None:
    stream = MetricsStream(("flow",), np.zeros(MAX_SENSORS), np.r_[1.0, np.zeros(MAX_SENSORS - 1)])
    columns = MetricColumns.from_values(
        ["a"] * 12, [300.0 * i for i in range(12)], [{"flow": float(v % 2)} for v in range(12)]
    )
    whole, after = stream.advance(stream.empty_states(), columns)
    assert after.records["real"].tolist() == [WINDOW - 1]
    _, part = stream.advance(stream.empty_states(), columns.take(np.arange(3)))
    stored = EntityStates.from_blobs(stream.state_layout, part.keys.tolist(), part.blobs())
    assert stored.records["real"].tolist() == [3]
    rest, _ = stream.advance(stored, columns.take(np.arange(3, 12)))
    np.testing.assert_allclose(rest, whole[3:], rtol=1e-12, atol=1e-12)  # the level's sums round differently
    # from the 8th reading on the window is full: the spread of 0, 1, 0, ... is the alternation's own (sd 0.5)
    spread = np.exp(whole[:, METRICS.feature_spec.names.index("logspread:s00")])
    np.testing.assert_allclose(spread[WINDOW - 1 :], 0.5, rtol=1e-4)
    assert not np.allclose(spread[: WINDOW - 1], 0.5, rtol=1e-4)


def test_a_state_written_for_other_sensors_starts_a_fresh_window() -> None:
    columns = MetricColumns.from_values(["a"] * 3, [0.0, 300.0, 600.0], [{"flow": v} for v in (1.0, 2.0, 3.0)])
    old = MetricsStream(("flow", "power"), np.zeros(MAX_SENSORS))
    new = MetricsStream(("flow", "pressure"), np.zeros(MAX_SENSORS))
    _, after = old.advance(old.empty_states(), columns.take(np.arange(2)))
    stored = EntityStates.from_blobs(old.state_layout, after.keys.tolist(), after.blobs())
    continued, _ = new.advance(stored, columns.take(np.array([2])))
    fresh, _ = new.advance(new.empty_states(), columns.take(np.array([2])))
    np.testing.assert_array_equal(continued, fresh)


def position_in_asset(columns: MetricColumns) -> np.ndarray:
    """Each reading's index among its asset's readings, in the columns' order (0: the asset's first)."""
    position = np.zeros(len(columns), dtype=int)
    for asset in np.unique(columns.asset_id).tolist():
        rows = np.flatnonzero(columns.asset_id == asset)
        position[rows] = np.arange(len(rows))
    return position


def quick_settings(**featurization: int) -> StreamSettings:
    """One fast detector, and the featurization under test."""
    ica = DetectorConfig(name="ica", kind="ica", features=list(ROW_FEATURES), params={"n_components": 0.8})
    return StreamSettings(detectors=[ica], featurization=featurization).completed(METRICS)


def test_a_version_trained_with_window_4_featurizes_and_keeps_state_with_window_4() -> None:
    columns = columns_of(METRICS.synthetic(events=1_200, entities=4, anomaly_rate=0.0, seed=21).payloads)
    result = train_round(TrainingData(columns, None, "test"), quick_settings(window_size=4), METRICS, None)
    version = DeployedVersion.assemble(result.draft, ModelBundle.from_verified_bytes(result.bundle.to_bytes()))
    stream = version.stream
    parts = ("lag3", "lag2", "lag1", "level", "logspread", "now")
    names = [f"{part}:s{slot:02d}" for part in parts for slot in range(MAX_SENSORS)]
    assert version.feature_names == names and list(stream.feature_spec.names) == names
    raw, after = stream.advance(stream.empty_states(), columns)
    assert raw.shape == result.raw_features.shape == (len(columns), len(parts) * MAX_SENSORS)
    assert after.records["rows"].shape == (4, 3, MAX_SENSORS) and after.records["real"].tolist() == [3] * 4
    assert score_batch(version, raw).scores.shape == (len(columns), 1)
    assert len(METRICS.feature_spec.names) == (WINDOW + 2) * MAX_SENSORS, "the catalog's stream keeps the default"


def test_a_pickled_learned_stream_keeps_its_window_and_an_older_one_has_the_default() -> None:
    columns = columns_of(METRICS.synthetic(events=300, entities=3, anomaly_rate=0.0, seed=22).payloads)
    learned = METRICS.configured({"window_size": 16, "window_step": 4}).learn(columns)
    restored = pickle.loads(pickle.dumps(learned))
    assert restored.shape == WindowShape(size=16, step=4) and restored.fingerprint == learned.fingerprint
    assert restored.feature_spec == learned.feature_spec and restored.state_layout == learned.state_layout
    np.testing.assert_array_equal(
        restored.advance(restored.empty_states(), columns)[0], learned.advance(learned.empty_states(), columns)[0]
    )
    # A version pickled before the window was configurable holds no shape: it was trained with the default.
    older = MetricsStream.__new__(MetricsStream)
    older.__setstate__({"sensors": learned.sensors, "fill": learned.fill, "typical_variance": learned.typical_variance})
    assert older.shape == WindowShape() and older.feature_spec == METRICS.feature_spec
    assert learned.fingerprint != METRICS.configured({"window_size": 8}).learn(columns).fingerprint


def test_a_step_fits_the_detectors_on_every_step_th_window_of_each_asset_and_scores_every_reading() -> None:
    columns = columns_of(METRICS.synthetic(events=1_200, entities=4, anomaly_rate=0.0, seed=23).payloads)
    every_third = position_in_asset(columns) % 3 == 2  # each asset's 3rd, 6th, ... reading
    stream = METRICS.configured({"window_step": 3})
    np.testing.assert_array_equal(stream.training_rows(columns), every_third)
    shuffled = np.random.default_rng(0).permutation(len(columns))  # any batch order: time order within an asset
    np.testing.assert_array_equal(stream.training_rows(columns.take(shuffled)), every_third[shuffled])
    result = train_round(TrainingData(columns, None, "test"), quick_settings(window_step=3), METRICS, None)
    split = time_ordered_split(len(columns), labelled=False, test_part="last")
    assert result.draft.training.rows_train == every_third[split.train].sum() < len(split.train) / 2
    assert result.draft.training.rows_calibration == len(split.calibration), "calibration takes every window"
    assert isinstance(result.bundle.stream, MetricsStream) and result.bundle.stream.shape.step == 3
    assert len(result.raw_features) == len(columns), "every reading is featurized"


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"window_size": 1}, "window size must be an integer from 2 to 64"),
        ({"window_size": 65}, "window size must be an integer from 2 to 64"),
        ({"window_step": 0}, "window step must be a positive integer"),
        ({"level_memory": 1}, "level memory must be an integer from 2 to 1000000"),
        ({"window": 8}, "takes window_size, window_step and level_memory; unknown: window"),
    ],
)
@pytest.mark.usefixtures("isolated")
def test_an_invalid_window_shape_is_refused_by_the_stream_and_by_the_settings(
    parameters: dict[str, int], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        METRICS.configured(parameters)
    with pytest.raises(ValidationError, match=reason):
        load_settings(streams={"metrics": {"featurization": parameters}})


@pytest.mark.usefixtures("isolated")  # in an empty working directory
def test_the_window_shape_is_set_per_stream_by_environment_and_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_STREAMS__METRICS__FEATURIZATION__WINDOW_SIZE", "16")
    Path("fleetwatch.toml").write_text("[streams.metrics.featurization]\nwindow_step = 4\n")
    assert load_settings().streams["metrics"].featurization == {"window_size": 16, "window_step": 4}
    with pytest.raises(ValidationError, match="the transactions stream takes no featurization parameters"):
        load_settings(streams={"transactions": {"featurization": {"window_size": 4}}})


def test_a_window_16_version_is_served_with_window_16_and_ignores_states_of_another_window(
    redis_client: redis.Redis, unique_name: str
) -> None:
    columns = columns_of(METRICS.synthetic(events=1_200, entities=4, anomaly_rate=0.0, seed=24).payloads)
    result = train_round(TrainingData(columns, None, "test"), quick_settings(window_size=16), METRICS, None)
    registry = ModelRegistry(redis_client, RedisArtifactStore(redis_client, unique_name), b"k" * 16, unique_name)
    registry.publish(result.bundle, result.draft, deploy=True)
    version = registry.load_deployed(METRICS.name)
    assert version is not None and isinstance(version.stream, MetricsStream) and version.stream.shape.size == 16
    # A worker's store is built on the catalog's stream (window 8): the version's stream decides the layout.
    store = EntityStateStore(redis_client, f"{unique_name}:", METRICS)
    halves, partitions = [np.arange(0, 600), np.arange(600, 1_200)], np.zeros(len(columns), dtype=np.int64)
    served = [store.features(columns.take(rows), partitions[rows], rows, stream=version.stream) for rows in halves]
    np.testing.assert_allclose(np.vstack(served), result.raw_features, rtol=1e-9, atol=1e-9)
    # States a window-4 version wrote are records of another size: window 16 starts those assets afresh.
    window_4 = METRICS.configured({"window_size": 4}).learn(columns)
    store.features(columns.take(halves[0]), partitions[halves[0]], halves[0] + 10_000, stream=window_4)
    fresh = store.features(columns.take(halves[1]), partitions[halves[1]], halves[1] + 10_000, stream=version.stream)
    expected = version.stream.advance(version.stream.empty_states(), columns.take(halves[1]))[0]
    np.testing.assert_allclose(fresh, expected, rtol=1e-9, atol=1e-9)


def test_a_wide_csv_trains_like_the_records_it_holds(tmp_path: Path) -> None:
    generated = METRICS.synthetic(events=600, entities=3, anomaly_rate=0.0, seed=4)
    path = tmp_path / "pumps.csv"
    pacsv.write_csv(wide_table(METRICS.decode(generated.payloads).events), path)
    from_csv = METRICS.decode(read_payloads(path, METRICS.table_payloads))
    assert not from_csv.errors
    assert [(e.event_id, e.asset_id, e.values) for e in from_csv.events] == [
        (e.event_id, e.asset_id, e.values) for e in METRICS.decode(generated.payloads).events
    ]
    data = from_files(METRICS, [path], None, sample_rate=1.0, max_rows=10_000)
    assert len(data.columns) == 600


def test_a_csv_without_asset_or_event_id_is_one_asset_and_text_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("timestamp,flow,power\n2026-10-01 00:00:00,1.5,\n2026-10-01 00:05:00,2.5,3\n")  # UTC
    events = METRICS.decode(read_payloads(path, METRICS.table_payloads)).events
    assert [(e.event_id, e.asset_id, e.values) for e in events] == [
        ("asset@2026-10-01T00:00:00.000Z", "asset", {"flow": 1.5}),
        ("asset@2026-10-01T00:05:00.000Z", "asset", {"flow": 2.5, "power": 3.0}),
    ]
    (tmp_path / "text.csv").write_text("timestamp,flow,state\n2026-10-01T00:00:00Z,1.5,on\n")
    with pytest.raises(FleetwatchError, match="not numeric: state"):
        read_payloads(tmp_path / "text.csv", METRICS.table_payloads)


@pytest.fixture(scope="module")
def pump_history() -> tuple[MetricsStream, np.ndarray, np.ndarray]:
    """A learned stream, the features of 12,000 readings of 8 pumps in time order, and each reading's fault kind."""
    generated = METRICS.synthetic(events=12_000, entities=8, anomaly_rate=0.04, seed=11)
    columns = columns_of(generated.payloads)
    stream = METRICS.learn(columns)
    kinds = dict(zip(generated.event_id.tolist(), generated.anomaly_kind.tolist(), strict=True))
    return stream, stream.advance(stream.empty_states(), columns)[0], np.array([kinds[e] for e in columns.event_id])


DETECTORS: dict[str, DetectorConfig] = {
    "annoy": DetectorConfig(name="annoy", kind="annoy", params={"random_state": 0}),
    "ica": DetectorConfig(
        name="ica", kind="ica", features=list(ROW_FEATURES), params={"n_components": 0.8, "random_state": 0}
    ),
    "aakr": DetectorConfig(name="aakr", kind="aakr", features=list(ROW_FEATURES), params={"random_state": 0}),
    "vae": DetectorConfig(
        name="vae", kind="vae", features=list(ROW_FEATURES), params={"random_state": 0, "epochs": 40}
    ),
}


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_each_detector_kind_ranks_injected_faults_above_normal_windows(
    kind: str, pump_history: tuple[MetricsStream, np.ndarray, np.ndarray]
) -> None:
    stream, raw, kinds = pump_history
    train, held_out = np.arange(8_000), np.arange(8_000, len(raw))
    train = train[kinds[train] == ""]
    scaler = FeatureScaler().fit(raw[train])
    config = DETECTORS[kind]
    detector = build_detector(kind, config.params)
    if (columns := detector_columns(config, stream)) is not None:
        detector = OnFeatures(detector, columns)
    detector.fit(scaler.transform(raw[train]))
    scores = detector.score_samples(scaler.transform(raw[held_out]))
    for fault in ("spike", "drift", "broken_correlation"):
        rows = (kinds[held_out] == fault) | (kinds[held_out] == "")
        assert (kinds[held_out] == fault).sum() >= 1
        assert roc_auc_score(kinds[held_out][rows] == fault, -scores[rows]) > 0.95, fault
    rows = (kinds[held_out] == "stuck") | (kinds[held_out] == "")
    assert roc_auc_score(kinds[held_out][rows] == "stuck", -scores[rows]) > 0.8, "stuck"


def test_a_trained_version_stores_every_methods_rates_and_alerts_name_the_faulty_sensor() -> None:
    generated = METRICS.synthetic(events=6_000, entities=6, anomaly_rate=0.04, seed=12)
    columns = columns_of(generated.payloads)
    labels = generated.labels()
    is_anomaly = np.array([labels[e][0] for e in columns.event_id.tolist()])
    settings = StreamSettings(fleet_fpr_budget=0.01, test_part="first", alert_rule="any_detector")
    result = train_round(TrainingData(columns, is_anomaly, "test"), settings.completed(METRICS), METRICS, None)
    assert result.draft.combination is None, "any_detector: the picked thresholds decide the alerts"
    assert result.evaluation is not None and result.draft.evaluation is not None
    rates = result.draft.evaluation["threshold_methods"]
    assert set(rates) == {"annoy", "ica", "aakr", "level"}
    assert set(rates["aakr"]) == {
        "mean_k_std",
        "min",
        "max",
        "moving_average",
        "quantile",
        "target_fpr",
        "fleet_budget",
    }
    assert rates["aakr"]["min"]["fpr"] > 0.9 and rates["aakr"]["max"]["fpr"] < 0.05
    assert rates["aakr"]["quantile"]["recall"] > 0.5
    # the held-out (test) part is the first rows: evaluation rows come before every training row
    split = time_ordered_split(len(columns), labelled=True, test_part="first")
    assert result.evaluation_rows.tolist() == split.evaluation.tolist() and split.evaluation.max() < split.train.min()

    version = DeployedVersion.assemble(result.draft, ModelBundle.from_verified_bytes(result.bundle.to_bytes()))
    stream = version.stream
    asset = columns.take(np.flatnonzero(columns.asset_id == columns.asset_id[0]))
    clean = asset.take(np.arange(len(asset) - 40, len(asset)))
    spiked = [dict(record) for record in clean.values.tolist()]
    spiked[-1]["vibration_mm_s"] = spiked[-1]["vibration_mm_s"] + 30.0
    scored_columns = MetricColumns(clean.event_id, clean.asset_id, clean.timestamp_s, np.array(spiked, dtype=object))
    raw, _ = stream.advance(stream.empty_states(), scored_columns)
    scored = score_batch(version, raw)
    assert scored.alert[-1] and scored.top_groups is not None and scored.top_group_shares is not None
    top = scored.group_names[scored.top_groups[-1][0]]
    assert top == "vibration_mm_s" and scored.top_group_shares[-1][0] > 0.5
    assert (scored.top_groups[~scored.alert] == -1).all(), "shares are computed for alerts only"


def deployed_version(columns: MetricColumns, settings: StreamSettings, labels: np.ndarray | None) -> Any:
    result = train_round(TrainingData(columns, labels, "test"), settings.completed(METRICS), METRICS, None)
    return result, DeployedVersion.assemble(result.draft, ModelBundle.from_verified_bytes(result.bundle.to_bytes()))


def test_a_new_assets_first_windows_look_like_typical_windows_not_stuck_sensors() -> None:
    # Trained on 60 clean pumps; 300 new clean pumps then send their first 16 readings each. Padded with the first
    # reading, the first 7 windows of each had no spread (a stuck sensor's): measured 698 of their 2,100 alerted at
    # a 1 % budget (19 % at the default 0.05 %). Spread over the real readings only: none (later windows: 36 of 2,700
    # with spec 2; with spec 3's level specialist: none of the first, 11 of the later windows).
    budget = 0.01
    train = columns_of(METRICS.synthetic(events=12_000, entities=60, anomaly_rate=0.0, seed=31).payloads)
    _, version = deployed_version(train, StreamSettings(fleet_fpr_budget=budget), None)
    fresh = columns_of(METRICS.synthetic(events=4_800, entities=300, anomaly_rate=0.0, seed=32).payloads)
    raw, _ = version.stream.advance(version.stream.empty_states(), fresh)
    alert = score_batch(version, raw).alert
    young = position_in_asset(fresh) < WINDOW - 1
    assert young.sum() == 300 * (WINDOW - 1)
    assert alert[young].mean() <= budget, f"{alert[young].sum()} of {young.sum()} first windows alert"


def test_with_the_held_out_part_first_new_assets_windows_do_not_inflate_the_thresholds() -> None:
    # The held-out part holds every pump's first windows. Padded, they set max, moving_average and the fleet budget
    # far above every fault: measured recall 0 for annoy and aakr at those, 0 for the fleet. Now (this seed):
    # fleet recall 0.44 at precision 0.90; the fleet budget's recall 0.28 (annoy), 0.35 (ica), 0.44 (aakr).
    generated = METRICS.synthetic(events=20_000, entities=10, anomaly_rate=0.03, seed=7)
    columns = columns_of(generated.payloads)
    labels = generated.labels()
    is_anomaly = np.array([labels[e][0] for e in columns.event_id.tolist()])
    settings = StreamSettings(test_part="first", alert_rule="any_detector")
    result, _ = deployed_version(columns, settings, is_anomaly)
    assert result.evaluation is not None and result.draft.evaluation is not None
    assert result.evaluation.fleet.recall > 0.3 and result.evaluation.fleet.precision > 0.8
    for detector, methods in result.draft.evaluation["threshold_methods"].items():
        for method in ("max", "moving_average", "fleet_budget"):
            assert methods[method]["recall"] > 0.2, (detector, method, methods[method])
            assert methods[method]["fpr"] < 0.01, (detector, method, methods[method])


def test_a_pump_fleet_with_faults_gives_alerts_for_faulty_windows_and_summaries_for_the_rest(
    kafka: KafkaConnection, redis_server: Any, unique_name: str, tmp_path: Path
) -> None:
    generated = METRICS.synthetic(events=9_000, entities=6, anomaly_rate=0.04, seed=21)
    history, scored = slice(0, 6_000), slice(6_000, None)
    path = tmp_path / "history.csv"
    pacsv.write_csv(wide_table(METRICS.decode(generated.payloads[history]).events), path)
    labels = tmp_path / "history.labels.jsonl"
    labels.write_bytes(
        b"".join(
            msgspec.json.encode({"event_id": e, "is_anomaly": bool(a), "anomaly_kind": k}) + b"\n"
            for e, a, k in zip(generated.event_id[history].tolist(), generated.is_anomaly[history].tolist(),
                               generated.anomaly_kind[history].tolist(), strict=True)
        )
    )  # fmt: skip
    payloads, keys = generated.payloads[scored], generated.keys[scored]
    bad = [reading({"flow": 1.0}, event_id="bad-1").replace(b"1.0", b"1e999"), b"{not json"]
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        fleet.env.update(
            {
                "FLEETWATCH_WORKER__STREAMS": '["metrics"]',
                "FLEETWATCH_STREAMS": json.dumps({"metrics": {"fleet_fpr_budget": 0.005}}),
                **topic_environment({"input": fleet.topics["input"], "summary": fleet.topics["summary"]}, "metrics"),
            }
        )
        trained = subprocess.run(
            [FLEETWATCH, "train", "--stream", "metrics", str(path), "--labels", str(labels)],
            env=fleet.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        assert "alert rule: the combined score of " in trained.stderr  # which members, and how they were chosen
        assert fleet.registry.deployed_version("metrics") == 1
        first, _ = fleet.start_worker(**QUICK_FAILOVER)
        # Paced, and the first worker killed midway: the second replays whatever the first had not committed.
        producing = threading.Thread(target=produce_paced, args=(fleet, [*payloads, *bad], [*keys, "x", "y"], 600))
        producing.start()
        assert fleet_waits_for(fleet, 600)
        first.send_signal(signal.SIGKILL)
        first.wait()
        fleet.start_worker(**QUICK_FAILOVER)
        producing.join()
        outputs = fleet.wait_for_outputs(len(payloads) + len(bad), timeout_s=180)
        version = fleet.registry.load_deployed("metrics")
    assert version is not None
    alerted, summarized = event_ids(outputs["alerts"]), event_ids(outputs["summary"])
    assert sorted(alerted + summarized) == sorted(generated.event_id[scored].tolist()), "one output per reading"
    assert sorted(r.value() for r in outputs["deadletter"]) == sorted(bad)

    # The same readings featurized offline in one pass score to the same alerts: the windows kept in Redis
    # across batches, a worker's death and the replay that followed equal a single clean pass.
    offline = version.stream.offline(payloads)
    expected = set(offline.columns.event_id[score_batch(version, offline.raw_features).alert].tolist())
    assert set(alerted) == expected

    kind = dict(zip(generated.event_id.tolist(), generated.anomaly_kind.tolist(), strict=True))
    faulty_window = _faulty_windows(offline.columns, kind)
    faults = {e for e in offline.columns.event_id.tolist() if kind[e] in ("spike", "drift", "broken_correlation")}
    warm = _warm_windows(offline.columns)
    # Measured (this data is fixed by its seed, training is seeded): 109 of 116 caught; 177 of 227 alerts in faulty
    # windows, 177 of 220 among windows of 8 real readings. The other 7 are pump-000's first 7 windows (of 42 such
    # readings): that pump alerts for its first 37 readings, full windows too (its load sits at its ceiling). When
    # the first windows were padded with the first reading and spread over it (spec 1): 99 of 116 caught, 144 of
    # 220 alerts in faulty windows, 24 alerts from those 42 readings.
    assert len(faults & set(alerted)) >= 0.85 * len(faults), "most spikes, drifts and broken correlations alert"
    assert sum(faulty_window[e] for e in alerted) >= 0.7 * len(alerted), "alerts are mostly faulty windows"
    warm_alerts = [e for e in alerted if warm[e]]
    assert sum(faulty_window[e] for e in warm_alerts) >= 0.7 * len(warm_alerts)
    assert len(alerted) - len(warm_alerts) <= 10, "an asset's first windows (42 readings) are scored like later ones"
    records = [decode_output(r.value()) for r in outputs["alerts"]]
    assert all(isinstance(r, AlertRecord) and r.contributions for r in records)
    assert {c.name for r in records for c in r.contributions} <= set(version.stream.sensors)  # type: ignore[attr-defined,union-attr]


def fleet_waits_for(fleet: Any, count: int, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while fleet.scored_count() < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _faulty_windows(columns: MetricColumns, kind: dict[str, str]) -> dict[str, bool]:
    """Whether each reading's window (it and its asset's WINDOW - 1 previous readings) holds a faulty reading."""
    faulty: dict[str, bool] = {}
    for asset in np.unique(columns.asset_id).tolist():
        ids = columns.event_id[columns.asset_id == asset].tolist()
        flags = [kind[e] != "" for e in ids]
        for i, event_id in enumerate(ids):
            faulty[event_id] = any(flags[max(0, i - WINDOW + 1) : i + 1])
    return faulty


def _warm_windows(columns: MetricColumns) -> dict[str, bool]:
    """Whether each reading's window holds WINDOW real readings of its asset (not padded: the asset's first ones)."""
    warm: dict[str, bool] = {}
    for asset in np.unique(columns.asset_id).tolist():
        for i, event_id in enumerate(columns.event_id[columns.asset_id == asset].tolist()):
            warm[event_id] = i >= WINDOW - 1
    return warm
