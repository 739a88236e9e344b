"""A stream defined only in the tests (electricity meter readings), served through the catalog's plug-in
setting: it proves that a stream is added without editing `workers/` or the engine.

Loaded into a worker or trainer process with FLEETWATCH_STREAM_PLUGINS='["tests.toy_stream:METERS"]'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import numpy as np

from shared.contracts import AwareTime, DecodedBatch, Identifier, JsonBatchDecoder
from shared.entity_state import EntityStates, StateLayout
from shared.pipeline import ArrayColumns, FeatureSpec, Stream, StreamTopics, SyntheticEvents, WindowDimensions


class MeterReading(msgspec.Struct, frozen=True, kw_only=True):
    event_id: Identifier
    meter_id: Identifier
    region: Identifier
    timestamp: AwareTime
    kwh: Annotated[float, msgspec.Meta(ge=0, le=1e6)]


@dataclass(frozen=True)
class MeterColumns(ArrayColumns):
    event_id: np.ndarray
    meter_id: np.ndarray
    region: np.ndarray
    timestamp_s: np.ndarray
    kwh: np.ndarray

    @property
    def entity(self) -> np.ndarray:
        return self.meter_id

    @property
    def event_time_s(self) -> np.ndarray:
        return self.timestamp_s


LAYOUT = StateLayout(np.dtype([("count", "<f8"), ("sum", "<f8"), ("sum_sq", "<f8"), ("last_kwh", "<f8")]))
SPEC = FeatureSpec(1, ("kwh", "kwh_z_vs_meter", "kwh_delta", "meter_count_log"))
_decode = JsonBatchDecoder(MeterReading)


class MeterStream(Stream[MeterReading, MeterColumns]):
    name = "meters"
    feature_spec = SPEC
    state_layout = LAYOUT
    topics = StreamTopics(input="events.meters", summary="summary.meters")
    windows = WindowDimensions(entity="meter_id", time="timestamp", dimensions=("region",), measure="kwh")
    alert_fields = ("event_id", "meter_id", "region", "kwh")
    default_detectors = ({"name": "robust_z", "kind": "robust_zscore", "params": {}},)

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch[MeterReading]:
        return _decode(payloads)

    def columns(self, events: Sequence[MeterReading]) -> MeterColumns:
        return MeterColumns(
            event_id=np.array([e.event_id for e in events], dtype=object),
            meter_id=np.array([e.meter_id for e in events], dtype=object),
            region=np.array([e.region for e in events], dtype=object),
            timestamp_s=np.array([e.timestamp.timestamp() for e in events], dtype=np.float64),
            kwh=np.array([e.kwh for e in events], dtype=np.float64),
        )

    def advance(self, before: EntityStates, columns: MeterColumns) -> tuple[np.ndarray, EntityStates]:
        n = len(columns)
        meters, group = np.unique(columns.meter_id, return_inverse=True)
        group = group.reshape(-1)
        order = np.lexsort((columns.timestamp_s, group))
        g, kwh = group[order], columns.kwh[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if n else np.array([], dtype=np.int64)
        rank = np.arange(n) - starts[g]
        start = before.aligned(meters)

        def earlier(values: np.ndarray) -> np.ndarray:  # sum of the earlier rows of each meter
            total = np.cumsum(values) - values
            return total - total[starts[g]]

        count = start["count"][g] + rank
        total = start["sum"][g] + earlier(kwh)
        total_sq = start["sum_sq"][g] + earlier(kwh**2)
        previous = np.where(rank > 0, kwh[np.maximum(np.arange(n) - 1, 0)], start["last_kwh"][g])
        mean = total / np.maximum(count, 1)
        spread = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean**2, 0.0) + 1.0)
        rows = np.empty((n, len(SPEC.names)))
        rows[order] = np.column_stack(
            [kwh, np.where(count > 0, (kwh - mean) / spread, 0.0), np.where(count > 0, kwh - previous, 0.0),
             np.log1p(count)]
        )  # fmt: skip
        last = np.append(starts[1:], n) - 1
        after = LAYOUT.empty(len(meters))
        after["count"], after["sum"] = count[last] + 1, total[last] + kwh[last]
        after["sum_sq"], after["last_kwh"] = total_sq[last] + kwh[last] ** 2, kwh[last]
        return rows, EntityStates(LAYOUT, meters, after)

    def report_table(self, columns: MeterColumns) -> dict[str, Any]:
        return {
            "event_id": columns.event_id.tolist(),
            "meter_id": columns.meter_id.tolist(),
            "region": columns.region.tolist(),
            "kwh": columns.kwh,
        }

    def synthetic(self, events: int, entities: int, anomaly_rate: float, seed: int) -> SyntheticEvents:
        rng = np.random.default_rng(seed)
        meter = rng.integers(0, entities, events)
        base = rng.uniform(1.0, 5.0, entities)
        kwh = base[meter] * rng.lognormal(0.0, 0.1, events)
        spike = rng.random(events) < anomaly_rate
        kwh[spike] *= 25.0
        start = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
        stamps = start + np.sort(rng.uniform(0, 86400.0, events))
        payloads = [
            msgspec.json.encode(
                {"event_id": f"m-{seed}-{i}", "meter_id": f"meter-{m}", "region": f"r{m % 3}",
                 "timestamp": datetime.fromtimestamp(t, UTC).isoformat(), "kwh": round(float(k), 4)}
            )
            for i, (m, t, k) in enumerate(zip(meter.tolist(), stamps.tolist(), kwh.tolist(), strict=True))
        ]  # fmt: skip
        return SyntheticEvents(
            payloads=payloads,
            keys=[f"meter-{m}" for m in meter.tolist()],
            event_id=np.array([f"m-{seed}-{i}" for i in range(events)], dtype=object),
            is_anomaly=spike,
            anomaly_kind=np.where(spike, "spike", ""),
        )


METERS = MeterStream()
