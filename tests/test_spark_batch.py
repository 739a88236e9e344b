"""The Spark batch path (local mode) gives batch mode's results on the same data: every score bit for bit, the
same alerts, top anomalies and report; its training sample and features are the trainer's, so training through
Spark publishes the version one process would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import structlog
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from shared.config import DetectorConfig, FleetwatchSettings, StreamSettings
from shared.local_infra.redis_server import RedisServer
from shared.model_version import DeployedVersion
from shared.registry import open_registry
from shared.spark_batch import score_with_spark, training_data_with_spark
from shared.spark_job import SparkJob, spark_session
from shared.streams.metrics.files import wide_table
from shared.streams.metrics.stream import METRICS
from shared.streams.transactions.files import write_labels, write_transactions
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import train_round
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


def test_spark_scores_every_event_exactly_as_batch_mode(
    spark: SparkSession, events: Path, version: DeployedVersion, tmp_path: Path
) -> None:
    batch = score_file(version, events, tmp_path / "batch", alert_rate_criterion=0.5, top_n=15)
    result = score_with_spark(spark, JOB, version, TRANSACTIONS, [events], tmp_path / "spark", 0.5, top_n=15)

    assert result.partitions == 4 and result.summary.malformed == batch.malformed == 3
    expected = pq.read_table(batch.scored_path).sort_by("event_id")
    got = pq.read_table(result.scored_path).sort_by("event_id").select(expected.column_names)
    assert got.num_rows == expected.num_rows == 3_997
    for name in expected.column_names:  # equal values, not close ones: features and scores bit for bit
        if name == "timestamp":
            assert pc.equal(got.column(name), expected.column(name).cast(got.schema.field(name).type)).to_pylist()
        else:
            assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
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

    expected = pq.read_table(batch.scored_path).sort_by("event_id")
    got = pq.read_table(result.scored_path).sort_by("event_id").select(expected.column_names)
    assert got.num_rows == expected.num_rows == 1_200 and 0 < batch.alerts == result.summary.alerts
    for name in expected.column_names:  # each asset's windows and levels whole in one partition: bit for bit
        if name != "timestamp":
            assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert result.files.report.read_text() == (tmp_path / "batch" / "report.md").read_text()


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
