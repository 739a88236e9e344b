"""Events as files and as Kafka payloads: JSONL (one JSON event per line) and Parquet (columnar).

Ground-truth labels are always written to a file of their own, so that nothing that scores events
can read them by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.errors import FleetwatchError
from shared.synthetic import SyntheticTransactions

SUPPORTED_SUFFIXES = (".jsonl", ".parquet")
_ENCODER = msgspec.json.Encoder()


class EventFileError(FleetwatchError):
    pass


def check_suffix(path: Path) -> None:
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise EventFileError(f"{path}: unsupported file type {path.suffix!r}; use one of {SUPPORTED_SUFFIXES}")


def labels_path_for(events_path: Path) -> Path:
    """`day1.jsonl` -> `day1.labels.jsonl`: beside the events, never inside them."""
    return events_path.with_name(f"{events_path.stem}.labels{events_path.suffix}")


def _iso_timestamps(epoch_ms: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(epoch_ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")


def transaction_records(data: SyntheticTransactions, start: int, stop: int) -> list[dict]:
    """Rows `start:stop` as JSON-ready dicts in the Transaction contract."""
    columns = {name: values[start:stop].tolist() for name, values in data.columns.items() if name != "timestamp_ms"}
    columns["timestamp"] = _iso_timestamps(data.columns["timestamp_ms"][start:stop]).tolist()
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def transaction_payloads(data: SyntheticTransactions, start: int, stop: int) -> list[bytes]:
    return [_ENCODER.encode(record) for record in transaction_records(data, start, stop)]


def chunk_bounds(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)


def _write_jsonl(records_by_chunk: Iterator[list[dict]], path: Path) -> None:
    with path.open("wb") as out:
        for records in records_by_chunk:
            out.write(_ENCODER.encode_lines(records))


def _arrow_table(columns: dict[str, np.ndarray]) -> pa.Table:
    arrays = {}
    for name, values in columns.items():
        if name == "timestamp_ms":
            arrays["timestamp"] = pa.array(values.astype("datetime64[ms]"), type=pa.timestamp("ms", tz="UTC"))
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def write_transactions(
    data: SyntheticTransactions, path: Path, chunk: int = 100_000, on_progress=lambda done: None
) -> None:
    """Write the events to `path` (.jsonl or .parquet), calling `on_progress(rows)` after each chunk."""
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(_arrow_table(data.columns), path)
        on_progress(len(data))
        return

    def chunks() -> Iterator[list[dict]]:
        for start, stop in chunk_bounds(len(data), chunk):
            yield transaction_records(data, start, stop)
            on_progress(stop - start)

    _write_jsonl(chunks(), path)


def write_labels(data: SyntheticTransactions, path: Path) -> None:
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = {
        "event_id": data.columns["event_id"],
        "is_anomaly": data.is_anomaly,
        "anomaly_kind": data.anomaly_kind,
    }
    if path.suffix == ".parquet":
        pq.write_table(pa.table({name: pa.array(values) for name, values in labels.items()}), path)
        return
    names = list(labels)
    rows = zip(*(values.tolist() for values in labels.values()), strict=True)
    _write_jsonl(iter([[dict(zip(names, row, strict=True)) for row in rows]]), path)


def read_payloads(path: Path) -> list[bytes]:
    """Raw event payloads from a file, as a Kafka consumer would see them (one per event)."""
    check_suffix(path)
    if path.suffix == ".jsonl":
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    table = pq.read_table(path)
    if "timestamp" in table.column_names and pa.types.is_timestamp(table.schema.field("timestamp").type):
        iso = _iso_timestamps(table.column("timestamp").cast(pa.int64()).to_numpy())
        table = table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(iso))
    return [_ENCODER.encode(row) for row in table.to_pylist()]


def read_labels(path: Path) -> dict[str, tuple[bool, str]]:
    """event_id -> (is_anomaly, anomaly_kind)."""
    check_suffix(path)
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        rows = [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return {row["event_id"]: (bool(row["is_anomaly"]), row["anomaly_kind"]) for row in rows}
