"""Sensor metrics (seed 003) as a Stream: sliding windows per asset, nearest-neighbour and reconstruction detectors.

The sensor names are not known in advance: `learn` takes them (sorted, at most `MAX_SENSORS`), each
sensor's median and its typical variance over a window (the median over the history's full windows: what a
new asset's window counts its missing rows at) from the training history, and the version keeps that learned
stream in its signed artifact. The catalog's stream has learned nothing and refuses to featurize.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from shared.contracts import DecodedBatch
from shared.entity_state import EntityStates
from shared.errors import FleetwatchError
from shared.pipeline import FeatureGroups, Stream, StreamTopics, SyntheticEvents, WindowDimensions
from shared.streams.metrics import files
from shared.streams.metrics.contract import SensorReadings, decode_readings
from shared.streams.metrics.synthetic import generate_pumps
from shared.streams.metrics.windows import (
    FEATURE_SLOT,
    FEATURE_SPEC,
    MAX_SENSORS,
    ROW_COLUMNS,
    WINDOW_LAYOUT,
    MetricColumns,
    advance_windows,
    learn_typical_variance,
    object_array,
    sensor_set_key,
    slide_windows,
)


class MetricsStream(Stream[SensorReadings, MetricColumns]):
    """`sensors`, `fill` (each sensor's training median) and `typical_variance` (each sensor's median variance over
    a training window) are what `learn` sets; empty in the catalog."""

    name = "metrics"
    feature_spec = FEATURE_SPEC
    state_layout = WINDOW_LAYOUT
    topics = StreamTopics(input="events.metrics", summary="summary.metrics")
    windows = WindowDimensions(entity="asset_id", time="timestamp", dimensions=("asset_id",))
    alert_fields = ("event_id", "asset_id")
    default_detectors = (
        # Windows as vectors for the neighbours; each sensor's log spread and current row for the others.
        {"name": "annoy", "kind": "annoy", "params": {"random_state": 0}},
        # 80 % of the variance: the sources keep the load-driven relations, the residual the rest (a stuck
        # sensor's collapsed spread among it); at 95 % the spreads' own directions are sources and stay unseen.
        {"name": "ica", "kind": "ica", "params": {"n_components": 0.8, "last_columns": ROW_COLUMNS, "random_state": 0}},
        {"name": "aakr", "kind": "aakr", "params": {"last_columns": ROW_COLUMNS, "random_state": 0}},
    )

    def __init__(
        self, sensors: Sequence[str] = (), fill: np.ndarray | None = None, typical_variance: np.ndarray | None = None
    ) -> None:
        self.sensors = tuple(sensors)
        self.fill = np.zeros(MAX_SENSORS) if fill is None else fill
        self.typical_variance = np.zeros(MAX_SENSORS) if typical_variance is None else typical_variance

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
        fill = np.nan_to_num(np.nanmedian(history.readings(sensors), axis=0)) if len(history) else np.zeros(MAX_SENSORS)
        windows = slide_windows(self.empty_states(), history, sensors, fill)
        return MetricsStream(sensors, fill, learn_typical_variance(windows))

    def advance(self, before: EntityStates, columns: MetricColumns) -> tuple[np.ndarray, EntityStates]:
        if not self.sensors:
            raise FleetwatchError(
                "the metrics stream featurizes with the sensors it learned from a training history; use a trained "
                "version's stream (or Stream.learn), not the catalog's"
            )
        return advance_windows(before, columns, self.sensors, self.fill, self.typical_variance)

    def feature_groups(self) -> FeatureGroups:
        return FeatureGroups(self.sensors, np.where(len(self.sensors) > FEATURE_SLOT, FEATURE_SLOT, -1))

    def table_payloads(self, table: pa.Table) -> list[bytes]:
        return files.table_payloads(table)

    @property
    def fingerprint(self) -> str:
        learned = hashlib.blake2b(np.concatenate([self.fill, self.typical_variance]).tobytes(), digest_size=8)
        return f"{super().fingerprint}:{sensor_set_key(self.sensors):016x}:{learned.hexdigest()}"

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
