"""Sensor metrics (seed 003) as a Stream: sliding windows per asset, nearest-neighbour and reconstruction detectors.

The sensor names are not known in advance: `learn` takes them (sorted, at most `MAX_SENSORS`), each
sensor's median and its typical variance over a window (the median over the history's full windows: what a
new asset's window counts its missing rows at) from the training history, and the version keeps that learned
stream in its signed artifact, with its window shape: a worker featurizes with the window size the version was
trained with, whatever its own configuration. The catalog's stream has learned nothing and refuses to featurize;
the stream's `featurization` setting (`window_size`, `window_step`, `level_memory`, see `windows.WindowShape`)
configures it.

>>> stream = METRICS.configured({"window_size": 4})
>>> stream.feature_spec.names[0], len(stream.feature_spec.names), stream.state_layout.dtype["rows"].shape
('lag3:s00', 96, (3, 16))
>>> METRICS.configured({"window_size": 1})
Traceback (most recent call last):
...
ValueError: the metrics window size must be an integer from 2 to 64 readings; got 1
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from shared.contracts import DecodedBatch
from shared.entity_state import EntityStates
from shared.errors import FleetwatchError
from shared.pipeline import FeatureGroups, Stream, StreamTopics, SyntheticEvents, WindowDimensions
from shared.streams.metrics import files
from shared.streams.metrics.contract import SensorReadings, decode_readings
from shared.streams.metrics.levels import learn_level_variance
from shared.streams.metrics.synthetic import generate_pumps
from shared.streams.metrics.windows import (
    MAX_SENSORS,
    ROW_FEATURES,
    SIZE_INDEPENDENT_PARTS,
    WINDOW_SIZES,
    MetricColumns,
    WindowShape,
    advance_windows,
    feature_spec,
    learn_typical_variance,
    object_array,
    sensor_set_key,
    slide_windows,
    training_windows,
    window_layout,
)


class MetricsStream(Stream[SensorReadings, MetricColumns]):
    """`sensors`, `fill` (each sensor's training median), `typical_variance` (each sensor's median variance over
    a training window) and `level_variance` (its median variance over a training asset) are what `learn` sets;
    empty in the catalog. `shape` is the configured window shape; the
    feature spec and the state layout follow from its size."""

    name = "metrics"
    topics = StreamTopics(input="events.metrics", summary="summary.metrics")
    windows = WindowDimensions(entity="asset_id", time="timestamp", dimensions=("asset_id",))
    alert_fields = ("event_id", "asset_id")
    default_detectors = (
        # Windows as vectors for the neighbours; each sensor's log spread and current row for the others.
        {"name": "annoy", "kind": "annoy", "features": ["lag*", "logspread:*", "now:*"], "params": {"random_state": 0}},
        # 80 % of the variance: the sources keep the load-driven relations, the residual the rest (a stuck
        # sensor's collapsed spread among it); at 95 % the spreads' own directions are sources and stay unseen.
        {"name": "ica", "kind": "ica", "features": ROW_FEATURES, "params": {"n_components": 0.8, "random_state": 0}},
        {"name": "aakr", "kind": "aakr", "features": ROW_FEATURES, "params": {"random_state": 0}},
        # Each sensor against its own running level: a specialist, since a level excursion is one kind of
        # evidence that the window detectors' consensus would outvote (on NAB, in the experiment that chose it:
        # 25.1 as a specialist, 2.4 voting; as shipped 20.8 as a specialist, README "Public sensor benchmarks").
        {"name": "level", "kind": "aakr", "features": ["level:*"], "specialist": True, "params": {"random_state": 0}},
    )

    def __init__(
        self,
        sensors: Sequence[str] = (),
        fill: np.ndarray | None = None,
        typical_variance: np.ndarray | None = None,
        level_variance: np.ndarray | None = None,
        *,
        shape: WindowShape | None = None,
    ) -> None:
        self.sensors = tuple(sensors)
        self.fill = np.zeros(MAX_SENSORS) if fill is None else fill
        self.typical_variance = np.zeros(MAX_SENSORS) if typical_variance is None else typical_variance
        self.level_variance = np.zeros(MAX_SENSORS) if level_variance is None else level_variance
        self.shape = WindowShape() if shape is None else shape
        self.feature_spec = feature_spec(self.shape.size)
        self.state_layout = window_layout(self.shape.size)

    def __getstate__(self) -> dict[str, Any]:
        """What a version's artifact keeps: what the stream learned and its shape (the spec and layout follow)."""
        return {
            "sensors": self.sensors,
            "fill": self.fill,
            "typical_variance": self.typical_variance,
            "level_variance": self.level_variance,
            "shape": self.shape,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Versions pickled before the shape was configurable were trained with the default one."""
        MetricsStream.__init__(self, **state)

    def configured(self, parameters: Mapping[str, int]) -> MetricsStream:
        """This stream, unlearned, with the `window_size`, `window_step` and `level_memory` `parameters` name (others
        as they are)."""
        if unknown := sorted(set(parameters) - {"window_size", "window_step", "level_memory"}):
            raise ValueError(
                f"the metrics stream takes window_size, window_step and level_memory; unknown: {', '.join(unknown)}"
            )
        shape = self.shape
        return MetricsStream(
            shape=WindowShape(
                size=parameters.get("window_size", shape.size),
                step=parameters.get("window_step", shape.step),
                level_memory=parameters.get("level_memory", shape.level_memory),
            )
        )

    def feature_spec_mismatch(self, version: int, names: Sequence[str]) -> str | None:
        """Every window size has its spec: the names are checked against the one of the size their count implies."""
        size = len(names) // MAX_SENSORS - SIZE_INDEPENDENT_PARTS + 1
        return (feature_spec(size) if size in WINDOW_SIZES else self.feature_spec).mismatch(version, names)

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch[SensorReadings]:
        return decode_readings(payloads)

    def columns(self, events: Sequence[SensorReadings]) -> MetricColumns:
        return MetricColumns(
            event_id=np.array([e.event_id for e in events], dtype=object),
            asset_id=np.array([e.asset_id for e in events], dtype=object),
            timestamp_s=np.array([e.timestamp.timestamp() for e in events], dtype=np.float64),
            values=object_array([e.values for e in events]),
        )

    def learn(self, history: MetricColumns) -> MetricsStream:
        """This stream with the history's sensors (sorted names), their medians and typical window variances; more
        than MAX_SENSORS is refused."""
        sensors = sorted({name for record in history.values.tolist() for name in record})
        if len(sensors) > MAX_SENSORS:
            raise FleetwatchError(
                f"the metrics stream scores at most {MAX_SENSORS} sensors per version; the training history names "
                f"{len(sensors)} ({', '.join(sensors[:20])}{', ...' if len(sensors) > 20 else ''}): train one "
                "version per group of at most 16 sensors, or drop sensors from the files"
            )
        readings = history.readings(sensors)  # one lookup per record and sensor: done once, used twice
        fill = np.nan_to_num(np.nanmedian(readings, axis=0)) if len(history) else np.zeros(MAX_SENSORS)
        windows = slide_windows(self.empty_states(), history, sensors, fill, self.shape.size)
        typical_variance = learn_typical_variance(windows)
        level_variance = learn_level_variance(readings, windows.by_asset, typical_variance)
        return MetricsStream(sensors, fill, typical_variance, level_variance, shape=self.shape)

    def training_rows(self, history: MetricColumns) -> np.ndarray:
        return training_windows(history, self.shape.step)

    def advance(self, before: EntityStates, columns: MetricColumns) -> tuple[np.ndarray, EntityStates]:
        if not self.sensors:
            raise FleetwatchError(
                "the metrics stream featurizes with the sensors it learned from a training history; use a trained "
                "version's stream (or Stream.learn), not the catalog's"
            )
        return advance_windows(
            before, columns, self.sensors, self.fill, self.typical_variance, self.level_variance, self.shape
        )

    def feature_groups(self) -> FeatureGroups:
        slot = np.arange(len(self.feature_spec.names)) % MAX_SENSORS  # every part of the spec is one column per slot
        return FeatureGroups(self.sensors, np.where(slot < len(self.sensors), slot, -1))

    def table_payloads(self, table: pa.Table) -> list[bytes]:
        return files.table_payloads(table)

    @property
    def fingerprint(self) -> str:
        learned = hashlib.blake2b(
            np.concatenate([self.fill, self.typical_variance, self.level_variance]).tobytes(), digest_size=8
        )
        shape = f"w{self.shape.size}m{self.shape.level_memory}"
        return f"{super().fingerprint}:{shape}:{sensor_set_key(self.sensors):016x}:{learned.hexdigest()}"

    def report_table(self, columns: MetricColumns) -> dict[str, Any]:
        readings = columns.readings(self.sensors)
        return {
            "event_id": columns.event_id.tolist(),
            "asset_id": columns.asset_id.tolist(),
            **{name: readings[:, slot] for slot, name in enumerate(self.sensors)},
        }

    def synthetic(self, events: int, entities: int, anomaly_rate: float, seed: int) -> SyntheticEvents:
        data = generate_pumps(events=events, assets=entities, anomaly_rate=anomaly_rate, seed=seed)
        return SyntheticEvents(data.payloads, data.keys, data.event_id, data.is_anomaly, data.anomaly_kind)


METRICS = MetricsStream()
