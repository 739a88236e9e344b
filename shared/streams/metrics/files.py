"""Sensor readings as tables (CSV, Parquet): a timestamp column, value columns, an asset column if there are many.

A wide table is what historians and spreadsheets export: one row per asset and time, one column per sensor.
`table_payloads` turns each row into one record of the contract; a table that already has a `values`
column (the contract's own shape, e.g. Parquet written from JSONL) is taken row by row as it is.

- `timestamp` (required): a timestamp column (CSV: ISO 8601 text; without a zone it is read as UTC);
- `asset_id` (or `asset`, optional): the asset; without one, every row belongs to the asset `asset`;
- `event_id` (optional): without one, `<asset>@<timestamp>` (unique: one record per asset and time);
- every other column is a sensor and must be numeric; an empty cell is a missing reading (the stream
  carries the sensor's previous value forward), a NaN cell a non-finite one (the record is a dead letter).

>>> import pyarrow as pa
>>> table = pa.table({"timestamp": pa.array([0], pa.timestamp("s")), "flow": [1.5], "power": [None]})
>>> table_payloads(table)
[b'{"event_id":"asset@1970-01-01T00:00:00.000Z","asset_id":"asset","timestamp":"1970-01-01T00:00:00.000Z","values":{"flow":1.5}}']
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pyarrow as pa

from shared import event_files
from shared.errors import FleetwatchError
from shared.streams.metrics.contract import SensorReadings

ASSET_COLUMNS = ("asset_id", "asset")
DEFAULT_ASSET = "asset"
_ENCODER = msgspec.json.Encoder()


def table_payloads(table: pa.Table) -> list[bytes]:
    """One contract record per row of a wide table (or per row of a table in the contract's shape)."""
    if "values" in table.column_names:
        return event_files.table_payloads(table)
    if "timestamp" not in table.column_names:
        raise FleetwatchError(f"a sensor table needs a 'timestamp' column; it has {', '.join(table.column_names)}")
    asset_column = next((name for name in ASSET_COLUMNS if name in table.column_names), None)
    sensors = [name for name in table.column_names if name not in {"timestamp", "event_id", asset_column}]
    if not sensors:
        raise FleetwatchError("a sensor table needs at least one value column beside timestamp and asset")
    if textual := [name for name in sensors if not _numeric(table.schema.field(name).type)]:
        raise FleetwatchError(f"sensor columns must be numeric; not numeric: {', '.join(textual)}")
    timestamps = _iso_timestamps(table.column("timestamp"))
    n = table.num_rows
    assets = [str(a) for a in table.column(asset_column).to_pylist()] if asset_column else [DEFAULT_ASSET] * n
    ids = (
        [str(e) for e in table.column("event_id").to_pylist()]
        if "event_id" in table.column_names
        else [f"{a}@{t}" for a, t in zip(assets, timestamps, strict=True)]
    )
    columns = [table.column(name).to_pylist() for name in sensors]
    # One record per row is the contract; each row's readings skip its empty cells.
    return [
        _ENCODER.encode(
            {
                "event_id": event_id,
                "asset_id": asset,
                "timestamp": stamp,
                "values": {name: value for name, value in zip(sensors, row, strict=True) if value is not None},
            }
        )
        for event_id, asset, stamp, row in zip(ids, assets, timestamps, zip(*columns, strict=True), strict=True)
    ]


def wide_table(readings: Sequence[SensorReadings]) -> pa.Table:
    """Decoded readings as a wide table (one column per sensor, empty where a record lacks it): what
    historians export, for writing CSV or Parquet files of synthetic data."""
    sensors = sorted({name for record in readings for name in record.values})
    return pa.table(
        {
            "timestamp": pa.array([r.timestamp for r in readings], pa.timestamp("ms", tz="UTC")),
            "asset_id": [r.asset_id for r in readings],
            "event_id": [r.event_id for r in readings],
            **{name: pa.array([r.values.get(name) for r in readings], pa.float64()) for name in sensors},
        }
    )


def _numeric(field_type: pa.DataType) -> bool:
    return bool(pa.types.is_integer(field_type) or pa.types.is_floating(field_type) or pa.types.is_null(field_type))


def _iso_timestamps(column: pa.ChunkedArray) -> list[str]:
    if not pa.types.is_timestamp(column.type):
        return [str(value) for value in column.to_pylist()]  # text the decoder checks (zone, range)
    epoch_ms = column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return list(event_files.iso_timestamps(epoch_ms).tolist())
