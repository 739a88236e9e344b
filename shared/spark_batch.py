"""The batch path on Apache Spark, for any stream: score, report and build training data beyond one machine.

Spark reads the Parquet (as `fleetwatch generate` writes it), numbers the rows in file order, and hashes every row
to a partition by its entity as the stream derives it from the row's fields (`Stream.spark_partition_key`: the
`windows.entity` field; a log line's session, found in its text when it names none), so each entity's whole history
lands in one partition. One Python call per partition (`mapInArrow`, the Arrow form of `mapInPandas`: the engine
works on Arrow and numpy, so no pandas round trip) then does to the partition what batch mode does to a whole file:
rows back into payloads, `Stream.offline` (decode, order by event time with ties in file order, `advance` from
empty states over many entities at once) and `score_batch`. A row's features and scores depend only on its
entity's history and the version, so they equal batch mode's bit for bit (`advance` sums each entity on its
own, and the detectors score each row in a fixed order whatever rows share its batch).

The version is loaded and verified on the driver by the registry (manifest signature, stream and feature spec,
artifact hash and signature), then broadcast as artifact bytes with their SHA-256; each executor's Python
worker checks the hash and unpickles once, keeping the version for the worker's later tasks. The signing key
never leaves the driver.

The scored rows go to a Parquet folder; the report (`shared.batch_report`: counts, top anomalies, concentration
by hour and the stream's dimensions) is computed by Spark from that folder and written like batch mode's.
For training, a partition keeps the sampled entities (the trainer's hash sample) and, when the sample passes
`max_rows`, only its latest rows, featurizes them, and the driver collects rows and features for `train_round`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from shared.batch_report import HOUR, TOP_ORDER, BatchSummary, Concentration, ReportFiles, scored_table
from shared.batch_report import write_batch_report as write_report_files
from shared.errors import FleetwatchError
from shared.model_version import DeployedVersion, Manifest, ModelBundle
from shared.pipeline import EventColumns, Stream
from shared.signing import content_hash
from shared.spark_job import SparkJob
from shared.training import TrainingData, TrainingError
from shared.training_data import entities_kept

POSITION = "_fleetwatch_position"
"""Each input row's number in file order: ties in event time keep it, as batch mode keeps the file's order."""


def read_events(spark: SparkSession, paths: Sequence[Path]) -> DataFrame:
    """Events as Parquet holds them, numbered in file order (monotonic across the files' splits, in order)."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FleetwatchError(f"no such file: {', '.join(missing)}")
    return spark.read.parquet(*(str(path) for path in paths)).withColumn(POSITION, F.monotonically_increasing_id())


def by_entity(events: DataFrame, stream: Stream[Any, Any], partitions: int) -> DataFrame:
    """Every entity's events in one partition: what `advance` needs to see an entity's whole history."""
    key = stream.spark_partition_key(events.columns)
    if isinstance(key, str) and key not in events.columns:
        raise FleetwatchError(
            f"the input has no column {key!r} (the {stream.name} stream's entity); "
            f"it has {', '.join(c for c in events.columns if c != POSITION)}"
        )
    return events.repartition(partitions, key)


def _partition_payloads(stream: Stream[Any, Any], batches: Iterator[pa.RecordBatch]) -> tuple[list[bytes], np.ndarray]:
    """A whole partition's rows in file order, as the stream's payloads (`Stream.table_payloads`, one per row, as
    batch mode reads the file: a sensor historian's wide table too), with their positions."""
    table = pa.Table.from_batches(list(batches) or [pa.record_batch({POSITION: pa.array([], pa.int64())})])
    if not table.num_rows:
        return [], np.empty(0, dtype=np.int64)
    table = table.sort_by(POSITION)
    return stream.table_payloads(table.drop_columns([POSITION])), table.column(POSITION).to_numpy()


# --- scoring ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedArtifact:
    """A version the driver's registry verified, as bytes for the executors; the hash guards the transfer."""

    manifest: bytes
    artifact: bytes
    sha256: str

    @classmethod
    def of(cls, version: DeployedVersion) -> VerifiedArtifact:
        artifact = version.bundle.to_bytes()
        return cls(msgspec.json.encode(version.manifest), artifact, content_hash(artifact))

    def load(self) -> DeployedVersion:
        if content_hash(self.artifact) != self.sha256:
            raise FleetwatchError("the broadcast model artifact does not match its hash (corrupted in transfer)")
        manifest = msgspec.json.decode(self.manifest, type=Manifest)
        return DeployedVersion.assemble(manifest, ModelBundle.from_verified_bytes(self.artifact))


_LOADED: dict[str, DeployedVersion] = {}
"""Versions this Python worker has unpickled, by hash: Spark reuses a worker for its later tasks."""


def _loaded(artifact: Broadcast[VerifiedArtifact]) -> DeployedVersion:
    value = artifact.value
    if value.sha256 not in _LOADED:
        _LOADED.clear()  # one version per job; never keep an old one around
        _LOADED[value.sha256] = value.load()
    return _LOADED[value.sha256]


def _score_partition(
    stream: Stream[Any, Any], artifact: Broadcast[VerifiedArtifact], schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:  # fmt: skip
    payloads, _ = _partition_payloads(stream, batches)
    offline = stream.offline(payloads)
    if not len(offline.columns):
        return
    table = scored_table(_loaded(artifact), stream, offline.columns, offline.raw_features)
    yield from table.cast(schema).to_batches(max_chunksize=10_000)


def _scored_schemas(stream: Stream[Any, Any], version: DeployedVersion) -> tuple[StructType, pa.Schema]:
    """The scored table's schema for Spark, and the Arrow schema Spark expects its batches in.

    Taken from a few synthetic events of the stream, so that it is the very table batch mode writes."""
    sample = stream.offline(stream.synthetic(events=50, entities=5, anomaly_rate=0.0, seed=0).payloads)
    arrow_schema = scored_table(version, stream, sample.columns, sample.raw_features).schema
    spark_schema = from_arrow_schema(arrow_schema, prefer_timestamp_ntz=False)
    return spark_schema, to_arrow_schema(spark_schema, timezone="UTC")


@dataclass(frozen=True)
class SparkScoring:
    summary: BatchSummary
    scored_path: Path
    files: ReportFiles
    partitions: int
    seconds: float


def score_with_spark(
    spark: SparkSession,
    job: SparkJob,
    version: DeployedVersion,
    stream: Stream[Any, Any],
    paths: Sequence[Path],
    out_dir: Path,
    alert_rate_criterion: float,
    top_n: int = 20,
) -> SparkScoring:
    """Score every event of `paths` with `version`: `out_dir/scored.parquet/` (a folder of part files, each in
    event-time order), then the batch report beside it, as `fleetwatch score` writes them."""
    started = time.perf_counter()
    events = read_events(spark, paths)
    records = events.count()
    partitions = job.partitions_for(records, spark.sparkContext.defaultParallelism)
    artifact = spark.sparkContext.broadcast(VerifiedArtifact.of(version))
    spark_schema, arrow_schema = _scored_schemas(stream, version)
    scored_path = out_dir / "scored.parquet"
    try:
        by_entity(events, stream, partitions).mapInArrow(
            partial(_score_partition, stream, artifact, arrow_schema), spark_schema
        ).write.mode("overwrite").parquet(str(scored_path))
    finally:
        artifact.destroy()
    scored = spark.read.parquet(str(scored_path))
    source = ", ".join(path.name for path in paths)
    summary = _summary(scored, stream, version, source, records, alert_rate_criterion, top_n)
    if not summary.events:
        raise FleetwatchError(f"{source}: no valid events ({records:,} malformed)")
    files = write_report_files(summary, stream.alert_fields, out_dir)
    return SparkScoring(summary, scored_path, files, partitions, time.perf_counter() - started)


def _summary(
    scored: DataFrame, stream: Stream[Any, Any], version: DeployedVersion, source: str, records: int,
    alert_rate_criterion: float, top_n: int,
) -> BatchSummary:  # fmt: skip
    """What the report says, computed by Spark over the scored rows: the same numbers as `BatchSummary.of_table`."""
    alert = F.col("is_alert").cast("long")
    totals = scored.agg(F.count(F.lit(1)).alias("events"), F.sum(alert).alias("alerts")).first()
    assert totals is not None
    order = [F.col(name).desc() if how == "descending" else F.col(name).asc() for name, how in TOP_ORDER]
    top = scored.filter(F.col("is_alert")).orderBy(*order).limit(top_n).toArrow()
    groupings = {HOUR: F.hour("timestamp"), **{name: F.col(name) for name in stream.windows.dimensions}}
    concentrations = [
        Concentration.from_counts(
            name,
            [
                (row["value"], row["events"], row["alerts"])
                for row in scored.groupBy(column.alias("value"))
                .agg(F.count(F.lit(1)).alias("events"), F.sum(alert).alias("alerts"))
                .collect()
            ],
        )
        for name, column in groupings.items()
    ]
    return BatchSummary(
        source=source,
        stream=stream.name,
        version=version.version,
        records=records,
        events=int(totals["events"]),
        alerts=int(totals["alerts"] or 0),
        alert_rate_criterion=alert_rate_criterion,
        top=top,
        concentrations=concentrations,
    )


# --- training data ---------------------------------------------------------------------------------------------

_SAMPLED = StructType.fromJson(
    {
        "type": "struct",
        "fields": [
            {"name": "event_time_s", "type": "double", "nullable": True, "metadata": {}},
            {"name": POSITION, "type": "long", "nullable": True, "metadata": {}},
        ],
    }
)
_FEATURIZED = StructType.fromJson(
    {
        "type": "struct",
        "fields": [
            *_SAMPLED.jsonValue()["fields"],
            {"name": "event_id", "type": "string", "nullable": True, "metadata": {}},
            {"name": "payload", "type": "binary", "nullable": True, "metadata": {}},
            {"name": "features", "type": {"type": "array", "elementType": "double", "containsNull": True},
             "nullable": True, "metadata": {}},
        ],
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Sample:
    """What a partition keeps for training: its valid events of sampled entities at or after the cut."""

    sample_rate: float
    cut: tuple[float, int] | None  # (event time, position) of the earliest row kept; None keeps all


def _sampled(
    stream: Stream[Any, Any], sample: _Sample, batches: Iterator[pa.RecordBatch]
) -> tuple[list[bytes], np.ndarray, EventColumns]:
    """The partition's kept events in time order (ties in file order): payloads, positions, columns."""
    payloads, positions = _partition_payloads(stream, batches)
    decoded = stream.decode(payloads)
    columns = stream.columns(decoded.events)
    at = np.asarray(decoded.positions, dtype=np.int64)
    keep = entities_kept(columns.entity, sample.sample_rate)
    if sample.cut is not None:
        cut_time, cut_position = sample.cut
        time_s, position = columns.event_time_s, positions[at]
        keep &= (time_s > cut_time) | ((time_s == cut_time) & (position >= cut_position))
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(columns.event_time_s[rows], kind="stable")]
    return [payloads[i] for i in at[rows].tolist()], positions[at[rows]], columns.take(rows)


def _sample_keys(
    stream: Stream[Any, Any], sample: _Sample, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    _, positions, columns = _sampled(stream, sample, batches)
    if len(columns):
        yield pa.record_batch({"event_time_s": columns.event_time_s, POSITION: positions})


def _featurize_partition(
    stream: Stream[Any, Any], sample: _Sample, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    payloads, positions, columns = _sampled(stream, sample, batches)
    if not len(columns):
        return
    raw, _ = stream.advance(stream.empty_states(), columns)
    width = len(stream.feature_spec.names)
    yield pa.record_batch(
        {
            "event_time_s": columns.event_time_s,
            POSITION: positions,
            "event_id": pa.array(columns.event_id.tolist(), pa.string()),
            "payload": pa.array(payloads, pa.binary()),
            "features": pa.ListArray.from_arrays(
                pa.array(np.arange(len(columns) + 1, dtype=np.int32) * width), pa.array(raw.reshape(-1))
            ),
        }
    )


def training_data_with_spark(
    spark: SparkSession,
    job: SparkJob,
    stream: Stream[Any, Any],
    paths: Sequence[Path],
    labels_path: Path | None,
    sample_rate: float,
    max_rows: int,
) -> TrainingData:
    """The trainer's sample of `paths` (whole entities by hash, the latest `max_rows` events), featurized by Spark:
    the same rows, order and features as `from_files` and `train_round` compute in one process. A stream that
    learns from its whole history (log templates) is refused: its executors would featurize before it learned."""
    if type(stream).learn is not Stream.learn:
        raise FleetwatchError(
            f"the {stream.name} stream learns from the whole training history before it featurizes; train it "
            "without Spark (fleetwatch train)"
        )
    events = read_events(spark, paths)
    partitions = job.partitions_for(events.count(), spark.sparkContext.defaultParallelism)
    grouped = by_entity(events, stream, partitions)
    sample = _Sample(sample_rate, None)
    keys = grouped.mapInArrow(partial(_sample_keys, stream, sample), _SAMPLED)
    if keys.count() > max_rows:
        last = keys.orderBy(F.col("event_time_s").desc(), F.col(POSITION).desc()).offset(max_rows - 1).first()
        assert last is not None
        sample = _Sample(sample_rate, (float(last["event_time_s"]), int(last[POSITION])))
    featurized = grouped.mapInArrow(partial(_featurize_partition, stream, sample), _FEATURIZED)
    source = "spark:file:" + ", ".join(str(path) for path in paths)
    if labels_path is not None:
        featurized = featurized.join(_labels(spark, labels_path), on="event_id", how="left")
    table = featurized.toArrow()
    if not table.num_rows:
        raise TrainingError(f"no events to train on from {source}")
    table = table.sort_by([("event_time_s", "ascending"), (POSITION, "ascending")])
    decoded = stream.decode(table.column("payload").to_pylist())
    columns = stream.columns(decoded.events)
    width = len(stream.feature_spec.names)
    raw = pc.list_flatten(table.column("features")).to_numpy().reshape(-1, width)
    is_anomaly = kinds = None
    if labels_path is not None:
        labelled = table.column("is_anomaly")
        if labelled.null_count:
            raise TrainingError(f"{labelled.null_count} of {table.num_rows} events have no label in the labelled set")
        is_anomaly = labelled.to_numpy(zero_copy_only=False).astype(bool)
        kinds = np.array(table.column("anomaly_kind").to_pylist(), dtype=object)
    return TrainingData(columns, is_anomaly, source, raw_features=raw, anomaly_kind=kinds)


def _labels(spark: SparkSession, path: Path) -> DataFrame:
    if not path.exists():
        raise FleetwatchError(f"{path}: no such file")
    reader = spark.read.parquet if path.suffix == ".parquet" else spark.read.json
    return (
        reader(str(path))
        .select("event_id", F.col("is_anomaly").cast("boolean"), F.col("anomaly_kind").cast("string"))
        .dropDuplicates(["event_id"])
    )
