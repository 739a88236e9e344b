"""The Spark batch path (local mode) gives batch mode's results on the same data: every score bit for bit, the
same alerts, top anomalies and report; its training sample and features are the trainer's, so training through
Spark publishes the version one process would."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import structlog
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from typer.testing import CliRunner

from shared.config import DetectorConfig, FleetwatchSettings, StreamSettings
from shared.local_infra.redis_server import RedisServer
from shared.model_version import DeployedVersion
from shared.registry import open_registry
from shared.spark_batch import score_with_spark, training_data_with_spark
from shared.spark_job import SparkJob, spark_session
from shared.streams.logs.contract import LogLine
from shared.streams.logs.sessions import HostWindows, SessionRule
from shared.streams.logs.stream import LOGS, LogStream
from shared.streams.metrics.files import wide_table
from shared.streams.metrics.stream import METRICS
from shared.streams.transactions.files import write_labels, write_transactions
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import TrainingData, train_round
from shared.training_data import from_files
from tests.small_models import train_small, train_small_metrics
from workers.batch_scoring import score_file
from workers.cli import app
from workers.trainer import TrainingSource, run_round

pytestmark = pytest.mark.spark

JOB = SparkJob(partitions=4, conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"})

# The four default detector kinds, small enough to train in seconds.
DEFAULT_KINDS = [
    DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 30, "random_state": 0}),
    DetectorConfig(name="ocsvm", kind="ocsvm", params={"n_components": 30, "random_state": 0}),
    DetectorConfig(
        name="autoencoder",
        kind="autoencoder",
        params={"hidden_layer_sizes": [8, 3, 8], "max_iter": 30, "random_state": 0},
    ),
    DetectorConfig(name="robust_z", kind="robust_zscore"),
]


REGISTRY_KEY = "test-key-0123456789abcdef"


def registry_settings(redis: RedisServer, prefix: str, detectors: list[DetectorConfig]) -> FleetwatchSettings:
    return FleetwatchSettings(
        redis_url=redis.url,
        redis_prefix=f"{prefix}:",
        registry_key=REGISTRY_KEY,  # type: ignore[arg-type]
        streams={"transactions": StreamSettings(detectors=detectors, fleet_fpr_budget=0.02, shadow_floor_auc=0.0)},
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_session(JOB, app_name="fleetwatch-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4,000 transactions of 400 users, three of them malformed (a non-positive amount), with labels beside."""
    data = generate_transactions(GeneratorSpec(users=400, events=4_000, anomaly_rate=0.03, seed=5))
    path = tmp_path_factory.mktemp("spark") / "events.parquet"
    write_transactions(data, path)
    write_labels(data, path.with_name("events.labels.parquet"))
    table = pq.read_table(path)
    amount = table.column("amount").to_numpy().copy()
    amount[[10, 2_000, 3_999]] = -1.0
    pq.write_table(table.set_column(table.column_names.index("amount"), "amount", pa.array(amount)), path)
    return path


@pytest.fixture(scope="module")
def version() -> DeployedVersion:
    result = train_small(events=5_000, seed=8, detectors=DEFAULT_KINDS)
    return DeployedVersion.assemble(msgspec.structs.replace(result.draft, version=3), result.bundle)


def scored_alike(batch_path: Path, spark_path: Path) -> int:
    """Spark's scored rows are batch mode's, equal values, not close ones (features and scores bit for bit); how
    many there are."""
    expected = pq.read_table(batch_path).sort_by("event_id")
    got = pq.read_table(spark_path).sort_by("event_id").select(expected.column_names)
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        if name == "timestamp":  # the same instants, in Spark's unit
            assert pc.all(pc.equal(got.column(name), expected.column(name).cast(got.schema.field(name).type))).as_py()
        else:
            assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    return got.num_rows


def test_spark_scores_every_event_exactly_as_batch_mode(
    spark: SparkSession, events: Path, version: DeployedVersion, tmp_path: Path
) -> None:
    batch = score_file(version, events, tmp_path / "batch", alert_rate_criterion=0.5, top_n=15)
    result = score_with_spark(spark, JOB, version, TRANSACTIONS, [events], tmp_path / "spark", 0.5, top_n=15)

    assert result.partitions == 4 and result.summary.malformed == batch.malformed == 3
    assert scored_alike(batch.scored_path, result.scored_path) == 3_997
    assert 0 < batch.alerts == result.summary.alerts

    spark_files, batch_dir = result.files, tmp_path / "batch"
    assert spark_files.report.read_text() == (batch_dir / "report.md").read_text()
    assert pq.read_table(spark_files.insights).equals(pq.read_table(batch_dir / "insights.parquet"))
    top_ids = pq.read_table(spark_files.top).column("event_id").to_pylist()
    assert len(top_ids) == 15 and top_ids == pq.read_table(batch_dir / "top.parquet").column("event_id").to_pylist()
    assert {chart.name for chart in spark_files.charts} == {"by-hour-of-day.png", "by-segment.png",
                                                           "by-transaction_type.png"}  # fmt: skip


def test_spark_scores_a_sensor_historians_wide_table_as_batch_mode_does(spark: SparkSession, tmp_path: Path) -> None:
    trained = train_small_metrics()
    version = DeployedVersion.assemble(msgspec.structs.replace(trained.draft, version=1), trained.bundle)
    readings = METRICS.decode(METRICS.synthetic(events=1_200, entities=6, anomaly_rate=0.04, seed=31).payloads)
    path = tmp_path / "pumps.parquet"
    pq.write_table(wide_table(readings.events), path)  # a column per sensor, as historians export

    batch = score_file(version, path, tmp_path / "batch", alert_rate_criterion=0.5, top_n=10)
    result = score_with_spark(spark, JOB, version, version.stream, [path], tmp_path / "spark", 0.5, top_n=10)

    # each asset's windows and levels whole in one partition: bit for bit
    assert scored_alike(batch.scored_path, result.scored_path) == 1_200 and 0 < batch.alerts == result.summary.alerts
    assert result.files.report.read_text() == (tmp_path / "batch" / "report.md").read_text()


LOG_DETECTORS = [
    DetectorConfig(name="new_template", kind="feature_extreme", features=["line_rarity", "session_unseen"]),
    DetectorConfig(name="pca", kind="pca"),
    DetectorConfig(name="count_deviation", kind="robust_zscore"),
]


def log_lines(seed: int, rows: int = 2_400, hosts: int = 4) -> list[LogLine]:
    """Mostly lines without a session id: block sessions (the block id in the text; only their end records name
    it), each host's heartbeats between them (no block id: the host's windows), and per host one line whose
    session id is the key of a window of its heartbeats."""
    blocks = LOGS.decode(LOGS.synthetic(events=rows, entities=hosts, anomaly_rate=0.05, seed=seed).payloads).events
    first, step = blocks[0].timestamp, (blocks[-1].timestamp - blocks[0].timestamp) / (rows // 6)
    heartbeats = [
        LogLine(event_id=f"hb-{seed}-{i}", source_host=f"dn-{i % hosts:03d}", timestamp=first + i * step,
                message=f"Heartbeat {i} sent to namenode", component="dfs.DataNode")
        for i in range(rows // 6)
    ]  # fmt: skip
    windows = [
        LogLine(event_id=f"own-{seed}-{beat.source_host}", source_host=beat.source_host,
                timestamp=beat.timestamp + timedelta(milliseconds=1), message="Heartbeat 0 sent to namenode",
                session_id=f"{beat.source_host}@{int(beat.timestamp.timestamp() // 300) * 300}")
        for beat in heartbeats[len(heartbeats) // 2 :][:hosts]
    ]  # fmt: skip
    return sorted([*blocks, *heartbeats, *windows], key=lambda line: line.timestamp)


def write_log_lines(lines: list[LogLine], path: Path) -> Path:
    """The lines as a Parquet table, a column per field (times in milliseconds, as batch mode reads them)."""
    table = pa.Table.from_pylist([msgspec.structs.asdict(line) for line in lines])
    timestamp = table.column("timestamp").cast(pa.timestamp("ms", tz="UTC"), safe=False)
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", timestamp), path)
    return path


@pytest.fixture(scope="module", params=["fixed", "sliding"])
def log_version(request: pytest.FixtureRequest) -> DeployedVersion:
    host_windows: HostWindows = request.param
    stream = LogStream(SessionRule(host_windows=host_windows))
    history = stream.history([msgspec.json.encode(line) for line in log_lines(seed=3)])[0]
    settings = StreamSettings(detectors=LOG_DETECTORS, fleet_fpr_budget=0.02, shadow_floor_auc=0.0).completed(stream)
    result = train_round(TrainingData(history, None, "test"), settings, stream, None)
    return DeployedVersion.assemble(msgspec.structs.replace(result.draft, version=1), result.bundle)


def test_log_lines_without_a_session_id_spread_over_partitions_and_score_as_batch_mode(
    spark: SparkSession, log_version: DeployedVersion, tmp_path: Path
) -> None:
    path = write_log_lines(log_lines(seed=4), tmp_path / "lines.parquet")
    batch = score_file(log_version, path, tmp_path / "batch", alert_rate_criterion=0.5, top_n=10)
    result = score_with_spark(spark, JOB, log_version, log_version.stream, [path], tmp_path / "spark", 0.5, top_n=10)

    rows = scored_alike(batch.scored_path, result.scored_path)
    assert 0 < batch.alerts == result.summary.alerts
    assert result.files.report.read_text() == (tmp_path / "batch" / "report.md").read_text()
    per_partition = sorted(pq.read_metadata(part).num_rows for part in result.scored_path.glob("part-*.parquet"))
    assert len(per_partition) == 4 and per_partition[-1] < rows / 2, per_partition


@pytest.mark.parametrize(
    "rule", [SessionRule(window_s=60), SessionRule(window_s=60, host_windows="sliding"), SessionRule(pattern=None)]
)
def test_every_line_of_a_session_has_one_partition_key_however_the_stream_found_the_session(
    spark: SparkSession, rule: SessionRule, tmp_path: Path
) -> None:
    stream, at = LogStream(rule), datetime(2026, 10, 1, tzinfo=UTC)

    def line(number: int, message: str, host: str, session_id: str | None = None) -> LogLine:
        return LogLine(event_id=f"e{number}", source_host=host, timestamp=at + timedelta(seconds=number),
                       message=message, session_id=session_id, ends_session=not message)  # fmt: skip

    window = f"dn-1@{int(at.timestamp())}"  # the fixed window of a minute that lines 5 and 7 fall in
    lines = [
        line(0, "Receiving block blk_-42 src", "dn-1"),
        line(1, "Deleting block blk_-42", "dn-2"),
        line(2, "", "fleetwatch-idle", session_id="blk_-42"),  # its end record names it
        line(3, "Receiving block blk_٣٤ src", "dn-1"),  # Arabic-Indic digits: Python's \d matches them
        line(4, "Deleting block blk_٣٤", "dn-2"),
        line(5, "Heartbeat sent to namenode", "dn-1"),
        line(6, "Heartbeat sent to namenode", "dn-2"),
        line(7, "Heartbeat sent to namenode", "dn-1", session_id=window),  # the same session as line 5's
        line(8, "Receiving block blk_-42 src", "dn-3", session_id="job-9"),
    ]
    sessions = dict(zip([line.event_id for line in lines], stream.columns(lines).session.tolist(), strict=True))
    frame = spark.read.parquet(str(write_log_lines(lines, tmp_path / "lines.parquet")))

    def partition_keys(frame: DataFrame) -> dict[str, str]:
        keyed = frame.select("event_id", stream.spark_partition_key(frame.columns).alias("key")).toArrow()
        return dict(zip(keyed.column("event_id").to_pylist(), keyed.column("key").to_pylist(), strict=True))

    keys, keys_of_session = partition_keys(frame), defaultdict(set)
    for event_id, session in sessions.items():
        keys_of_session[session].add(keys[event_id])
    assert all(len(found) == 1 for found in keys_of_session.values()), keys_of_session
    assert len(set(keys.values())) > 2
    without_ids = frame.filter(F.col("session_id").isNull())  # a file without the field keys its lines alike
    assert partition_keys(without_ids.drop("session_id")) == partition_keys(without_ids)


def test_spark_training_sample_is_the_trainers_with_the_same_features(spark: SparkSession, events: Path) -> None:
    labels = events.with_name("events.labels.parquet")
    # Half the users, then only the latest 1,500 of their events: both the sample and the cut are exercised.
    expected = from_files(TRANSACTIONS, [events], labels, sample_rate=0.5, max_rows=1_500)
    got = training_data_with_spark(spark, JOB, TRANSACTIONS, [events], labels, sample_rate=0.5, max_rows=1_500)

    assert len(got.columns) == len(expected.columns) == 1_500
    assert got.columns.event_id.tolist() == expected.columns.event_id.tolist()
    assert got.is_anomaly is not None and expected.is_anomaly is not None
    assert np.array_equal(got.is_anomaly, expected.is_anomaly)
    raw, _ = TRANSACTIONS.advance(TRANSACTIONS.empty_states(), expected.columns)
    assert got.raw_features is not None and np.array_equal(got.raw_features, raw)


def test_training_through_spark_publishes_the_version_one_process_would(
    spark: SparkSession, events: Path, redis_server: RedisServer, unique_name: str
) -> None:
    settings = registry_settings(redis_server, unique_name, DEFAULT_KINDS)
    registry = open_registry(settings)
    labels = str(events.with_name("events.labels.parquet"))
    outcome = run_round(
        settings, registry, "transactions", TrainingSource(files=[str(events)], labels=labels, spark=JOB)
    )

    loaded = registry.load("transactions", outcome.manifest.version)
    assert outcome.deployed and registry.deployed_version("transactions") == loaded.version == 1
    assert loaded.manifest.training.source.startswith("spark:file:")
    one_process = train_round(
        from_files(TRANSACTIONS, [events], Path(labels), 1.0, 1_000_000),
        settings.streams["transactions"],
        TRANSACTIONS,
        None,
    )
    assert [entry.thresholds for entry in loaded.manifest.detectors] == [
        entry.thresholds for entry in one_process.draft.detectors
    ]
    assert loaded.manifest.evaluation == one_process.draft.evaluation


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    """In this process, so the command joins the module's session (as a trainer service's later rounds do).
    The command configures logging onto the runner's captured stderr, closed afterwards: restore the logging."""
    saved = structlog.get_config()
    yield CliRunner()
    structlog.configure(**saved)


def test_spark_score_command_scores_with_the_deployed_version(
    cli: CliRunner,
    spark: SparkSession,
    events: Path,
    version: DeployedVersion,
    redis_server: RedisServer,
    unique_name: str,
    tmp_path: Path,
) -> None:
    env = {
        "FLEETWATCH_REDIS_URL": redis_server.url,
        "FLEETWATCH_REDIS_PREFIX": f"{unique_name}:",
        "FLEETWATCH_REGISTRY_KEY": REGISTRY_KEY,
        "FLEETWATCH_STREAMS__TRANSACTIONS__BATCH_ALERT_RATE": "0.001",
    }
    registry = open_registry(registry_settings(redis_server, unique_name, DEFAULT_KINDS))
    registry.publish(version.bundle, version.manifest, deploy=True)
    out = tmp_path / "out"
    done = cli.invoke(app, ["spark", "score", str(events), "--out", str(out), "--partitions", "3"], env=env)
    assert done.exit_code == 4, done.output  # the batch alert's exit code, as `fleetwatch score`
    assert "3,997 events (3 malformed)" in done.output and "3 partitions" in done.output
    assert "**BATCH ALERT**" in (out / "report.md").read_text()
    assert pq.read_table(out / "scored.parquet").num_rows == 3_997

    for wrong, problem in (
        ([str(tmp_path / "events.jsonl")], "the Spark path reads Parquet"),
        ([str(events), "--conf", "spark.sql.shuffle.partitions"], "--conf takes KEY=VALUE"),
    ):
        refused = cli.invoke(app, ["spark", "score", *wrong], env=env)
        assert problem in str(refused.exception)
