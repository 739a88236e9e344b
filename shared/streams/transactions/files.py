"""Synthetic transactions as files and as Kafka payloads (JSONL or Parquet), labels in a file of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pyarrow.parquet as pq

from shared import event_files
from shared.event_files import arrow_table, check_suffix, chunk_bounds, iso_timestamps, write_jsonl
from shared.streams.transactions.synthetic import SyntheticTransactions

_ENCODER = msgspec.json.Encoder()


def transaction_records(data: SyntheticTransactions, start: int, stop: int) -> list[dict]:
    """Rows `start:stop` as JSON-ready dicts in the Transaction contract."""
    columns = {name: values[start:stop].tolist() for name, values in data.columns.items() if name != "timestamp_ms"}
    columns["timestamp"] = iso_timestamps(data.columns["timestamp_ms"][start:stop]).tolist()
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def transaction_payloads(data: SyntheticTransactions, start: int, stop: int) -> list[bytes]:
    return [_ENCODER.encode(record) for record in transaction_records(data, start, stop)]


def write_transactions(
    data: SyntheticTransactions, path: Path, chunk: int = 100_000, on_progress=lambda done: None
) -> None:
    """Write the events to `path` (.jsonl or .parquet), calling `on_progress(rows)` after each chunk."""
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(arrow_table(data.columns), path)
        on_progress(len(data))
        return

    def chunks() -> Iterator[list[dict]]:
        for start, stop in chunk_bounds(len(data), chunk):
            yield transaction_records(data, start, stop)
            on_progress(stop - start)

    write_jsonl(chunks(), path)


def write_labels(data: SyntheticTransactions, path: Path) -> None:
    event_files.write_labels(path, data.columns["event_id"], data.is_anomaly, data.anomaly_kind)
