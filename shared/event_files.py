"""Events as files and as Kafka payloads: JSONL (one JSON event per line) and Parquet (columnar).

Ground-truth labels are always written to a file of their own, so that nothing that scores events
can read them by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shared.errors import FleetwatchError

SUPPORTED_SUFFIXES = (".jsonl", ".parquet")
_ENCODER = msgspec.json.Encoder()


class EventFileError(FleetwatchError):
    pass


def check_suffix(path: Path) -> None:
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise EventFileError(f"{path}: unsupported file type {path.suffix!r}; use one of {SUPPORTED_SUFFIXES}")


def check_payload_file(path: Path) -> None:
    """Payloads are written as .jsonl only: a payload is its stream's own contract, which a table would have to
    know."""
    if path.suffix != ".jsonl":
        raise EventFileError(f"{path}: this stream's events are written as .jsonl (one payload per line)")


def labels_path_for(events_path: Path) -> Path:
    """`day1.jsonl` -> `day1.labels.jsonl`: beside the events, never inside them."""
    return events_path.with_name(f"{events_path.stem}.labels{events_path.suffix}")


def iso_timestamps(epoch_ms: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(epoch_ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")


def chunk_bounds(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)


def write_jsonl(records_by_chunk: Iterator[list[dict]], path: Path) -> None:
    with path.open("wb") as out:
        for records in records_by_chunk:
            out.write(_ENCODER.encode_lines(records))


def write_payloads(
    payloads: Sequence[bytes], path: Path, chunk: int = 100_000, on_progress: Callable[[int], None] = lambda done: None
) -> None:
    """Events exactly as a producer would send them, one JSON payload per line."""
    check_payload_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for start, stop in chunk_bounds(len(payloads), chunk):
            out.write(b"".join(payload + b"\n" for payload in payloads[start:stop]))
            on_progress(stop - start)


def write_labels(path: Path, event_id: np.ndarray, is_anomaly: np.ndarray, anomaly_kind: np.ndarray) -> None:
    """Ground truth, one row per event (`event_id`, `is_anomaly`, `anomaly_kind`), as `read_labels` reads it."""
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = {"event_id": event_id, "is_anomaly": is_anomaly, "anomaly_kind": anomaly_kind}
    if path.suffix == ".parquet":
        pq.write_table(pa.table({name: pa.array(values) for name, values in labels.items()}), path)
        return
    names = list(labels)
    rows = zip(*(values.tolist() for values in labels.values()), strict=True)
    write_jsonl(iter([[dict(zip(names, row, strict=True)) for row in rows]]), path)


def arrow_table(columns: dict[str, np.ndarray]) -> pa.Table:
    arrays = {}
    for name, values in columns.items():
        if name == "timestamp_ms":
            arrays["timestamp"] = pa.array(values.astype("datetime64[ms]"), type=pa.timestamp("ms", tz="UTC"))
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


READABLE_SUFFIXES = (*SUPPORTED_SUFFIXES, ".csv")
"""Event files that can be read: the written kinds, and CSV (a table, like Parquet; a stream says what a row is)."""


def read_payloads(path: Path, from_table: Callable[[pa.Table], list[bytes]] | None = None) -> list[bytes]:
    """Raw event payloads from a file, as a Kafka consumer would see them (one per event).

    A table (Parquet, CSV) becomes payloads through `from_table` (a stream's `table_payloads`; by default one row
    is one event as it is). CSV columns are typed by pyarrow's inference: ISO 8601 text becomes a timestamp."""
    if path.suffix not in READABLE_SUFFIXES:
        raise EventFileError(f"{path}: unsupported file type {path.suffix!r}; use one of {READABLE_SUFFIXES}")
    if path.suffix == ".jsonl":
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    table = pacsv.read_csv(path) if path.suffix == ".csv" else pq.read_table(path)
    return (from_table or table_payloads)(table)


def table_payloads(table: pa.Table) -> list[bytes]:
    """Rows of an event table (as Parquet holds them) as the JSON payloads a producer would send.

    A timestamp column becomes RFC 3339 text with milliseconds, whatever its unit (Spark hands over microseconds);
    one without a time zone is read as UTC.
    """
    if "timestamp" in table.column_names and pa.types.is_timestamp(table.schema.field("timestamp").type):
        epoch_ms = table.column("timestamp").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
        table = table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(iso_timestamps(epoch_ms)))
    return [_ENCODER.encode(row) for row in table.to_pylist()]


def label_arrays(labels: Mapping[str, tuple[bool, str]], event_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`is_anomaly` (bool) and `anomaly_kind` (object) of these events, in their order; each must have a label."""
    labelled = [labels[event_id] for event_id in event_ids]
    return (
        np.array([is_anomaly for is_anomaly, _ in labelled], dtype=bool),
        np.array([kind for _, kind in labelled], dtype=object),
    )


def read_labels(path: Path) -> dict[str, tuple[bool, str]]:
    """event_id -> (is_anomaly, anomaly_kind)."""
    check_suffix(path)
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        rows = [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return {row["event_id"]: (bool(row["is_anomaly"]), row["anomaly_kind"]) for row in rows}
