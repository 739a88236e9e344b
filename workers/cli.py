"""`fleetwatch`: the one console script; each subcommand is a role or an operator's tool."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from shared.config import FleetwatchSettings, load_settings, unknown_variables
from shared.errors import FleetwatchError
from shared.logs import configure_logging, get_logger
from shared.streams.logs.sessions import HostWindows

if TYPE_CHECKING:
    from shared.registry import ModelRegistry
    from shared.spark_job import SparkJob
    from shared.streams.transactions.synthetic import SyntheticTransactions
    from workers.log_workflow import ScanOptions
    from workers.trainer import TrainingSource

# Piped output (CI logs, files) gets wide lines so that tables are not cut at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
app = typer.Typer(
    name="fleetwatch",
    help="Score every Kafka event against every deployed anomaly-detection model.\n\n"
    "Settings come from flags, FLEETWATCH_* environment variables, the TOML file named by "
    "FLEETWATCH_CONFIG (default ./fleetwatch.toml) and the connection file of `fleetwatch dev up`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
dev_app = typer.Typer(
    help="The local Kafka broker (KRaft) and Redis server on loopback, for development, the demo and tests.",
    no_args_is_help=True,
)
app.add_typer(dev_app, name="dev")


def _settings(**overrides: object) -> FleetwatchSettings:
    """The settings, with logging configured by them; a value no source may hold, or a config file that does
    not parse, is one line naming the setting and where to look."""
    from pydantic_settings import SettingsError

    sources = "FLEETWATCH_* variables, the config file or .fleetwatch/connection.env"
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        raise FleetwatchError(f"invalid settings ({sources}): {_validation_problems(exc)}") from exc
    except (SettingsError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FleetwatchError(f"unreadable settings ({sources}): {exc}") from exc
    configure_logging(settings.log_format, settings.log_level)
    if unknown := unknown_variables(os.environ):
        get_logger("fleetwatch.settings").warning(
            "unknown_environment_variables", names=unknown, effect="ignored: they name no setting"
        )
    return settings


def _validation_problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: `where: what` for each, `settings` where the whole model was refused."""
    return "; ".join(f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}" for error in exc.errors())


@dev_app.command("up")
def dev_up() -> None:
    """Start Kafka and Redis on loopback (or reuse them), prove both by a round trip, create the topics.

    Prints FLEETWATCH_KAFKA_BOOTSTRAP=... and FLEETWATCH_REDIS_URL=... lines for `eval` or `source`.
    """
    from shared.local_infra import dev_stack

    settings = _settings()
    started = time.monotonic()
    with console.status("starting Kafka (KRaft) and Redis ..."):
        stack = dev_stack.up(settings)
    console.print(
        f"[green]ready[/green] in {time.monotonic() - started:.1f}s; topics: {', '.join(settings.all_topics())}"
    )
    sys.stdout.write(stack.connection_lines())


@dev_app.command("status")
def dev_status() -> None:
    """Say whether the local stack runs; print its connection lines. Exit 1 when it is not up."""
    from shared.local_infra import dev_stack

    stack = dev_stack.status()
    if stack is None:
        console.print("the local stack is not up (fleetwatch dev up starts it)")
        raise typer.Exit(1)
    for name, pid, running in (
        ("kafka", stack.kafka_pid, stack.kafka_running),
        ("redis", stack.redis_pid, stack.redis_running),
    ):
        console.print(f"{name}: {'running' if running else 'NOT running'} (pid {pid})")
    sys.stdout.write(stack.connection_lines())
    if not (stack.kafka_running and stack.redis_running):
        raise typer.Exit(1)


@dev_app.command("down")
def dev_down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the data folder (.fleetwatch/).")] = False,
) -> None:
    """Stop the local Kafka and Redis; nothing is left running."""
    from shared.local_infra import dev_stack

    done = dev_stack.down(purge=purge)
    console.print("\n".join(done) if done else "nothing was running")


@dev_app.command("jars")
def dev_jars() -> None:
    """Resolve the Kafka broker's jars from Maven Central (pinned pom, strict checksums) into .cache/."""
    from shared.local_infra.kafka_jars import kafka_version, resolve_kafka_jars

    jars = resolve_kafka_jars()
    console.print(f"Kafka {kafka_version(jars)}: {len(list(jars.glob('*.jar')))} jars in {jars}")


@app.command()
def generate(
    stream: Annotated[
        str, typer.Option("--stream", help="Whose events: transactions, metrics (pump sensor readings) or logs.")
    ] = "transactions",
    out: Annotated[
        Path | None,
        typer.Option(help="Write events to this file instead of Kafka (.jsonl; transactions also .parquet)."),
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Kafka topic to produce to (default: the stream's input topic).")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Ground-truth file (.jsonl/.parquet), kept apart from the events. "
            "Default: beside --out, or .fleetwatch/labels/<topic>.labels.jsonl."
        ),
    ] = None,
    entities: Annotated[
        int | None,
        typer.Option(
            "--entities",
            "--users",
            min=1,
            help="Users (spread over four segments), pumps or hosts behind the events. "
            "Default: 1,000,000 users; 24 pumps or hosts.",
        ),
    ] = None,
    events: Annotated[
        int | None, typer.Option(min=1, help="Events. Default: 10,000,000 transactions; 100,000 readings or lines.")
    ] = None,
    anomaly_rate: Annotated[float, typer.Option(min=0.0, max=0.49, help="Share of injected anomalies.")] = 0.01,
    days: Annotated[
        float | None, typer.Option(min=0.01, help="Time span of the transactions (transactions only). Default: 30.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same data.")] = 42,
) -> None:
    """Synthetic events of a stream with labelled injected anomalies (transactions: seed 001's four segments)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from shared import event_files
    from shared.config import dev_dir
    from shared.streams.catalog import stream_named

    settings = _settings()
    chosen = stream_named(stream)
    transactions = stream == "transactions"
    if days is not None and not transactions:
        raise FleetwatchError(f"--days applies to transactions only; the {stream} stream's generator sets its own span")
    if out is not None:
        (event_files.check_suffix if transactions else event_files.check_payload_file)(out)
    target_topic = topic or settings.stream_settings(stream).input_topic
    labels_path = labels or (
        event_files.labels_path_for(out) if out else dev_dir() / "labels" / f"{target_topic}.labels.jsonl"
    )
    event_files.check_suffix(labels_path)  # before the events are drawn and written, not after
    events = events or (10_000_000 if transactions else 100_000)
    entities = entities or (1_000_000 if transactions else 24)
    started = time.monotonic()
    with console.status(f"drawing {events:,} {stream} events of {entities:,} entities ..."):
        if transactions:
            from shared.streams.transactions import synthetic

            spec = synthetic.GeneratorSpec(
                users=entities, events=events, anomaly_rate=anomaly_rate, days=days or 30.0, seed=seed
            )
            data = synthetic.generate_transactions(spec)
            truth = data.columns["event_id"], data.is_anomaly, data.anomaly_kind
        else:
            generated = chosen.synthetic(events, entities, anomaly_rate, seed)
            truth = generated.event_id, generated.is_anomaly, generated.anomaly_kind
    drawn = time.monotonic()
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip
    with progress:
        task = progress.add_task(f"writing {out}" if out else f"producing to {target_topic}", total=events)

        def advance(done: int) -> None:
            progress.advance(task, done)

        if transactions:
            failed = _write_transactions(settings, data, out, target_topic, advance)
        elif out is not None:
            event_files.write_payloads(generated.payloads, out, on_progress=advance)
            failed = 0
        else:
            failed = _produce_keyed(settings, target_topic, generated.keys, generated.payloads, advance)
    event_files.write_labels(labels_path, *truth)
    if transactions:
        _print_generation_summary(data, time.monotonic() - started, time.monotonic() - drawn)
    else:
        kinds = Counter(generated.anomaly_kind[generated.is_anomaly].tolist())
        console.print("injected anomalies: " + (", ".join(f"{k}={v:,}" for k, v in sorted(kinds.items())) or "none"))
        elapsed = time.monotonic() - started
        console.print(f"{events:,} events in {elapsed:.1f}s ({events / max(elapsed, 1e-9):,.0f} events/s end to end)")
    console.print(f"labels: {labels_path}")
    if failed:
        raise FleetwatchError(f"{failed} of {events} records were not acknowledged by Kafka")


def _write_transactions(
    settings: FleetwatchSettings,
    data: SyntheticTransactions,
    out: Path | None,
    topic: str,
    advance: Callable[[int], None],
) -> int:
    """Synthetic transactions to a file (.jsonl or .parquet) or a topic; how many Kafka did not acknowledge."""
    from shared.event_files import chunk_bounds
    from shared.streams.transactions.files import transaction_payloads, write_transactions

    if out is not None:
        write_transactions(data, out, on_progress=advance)
        return 0
    return sum(  # payloads built a chunk at a time: 10M at once would not fit beside the columns
        _produce_keyed(settings, topic, data.columns["user_id"][start:stop].tolist(),
                        transaction_payloads(data, start, stop), advance)
        for start, stop in chunk_bounds(len(data), 200_000)
    )  # fmt: skip


def _produce_keyed(
    settings: FleetwatchSettings,
    topic: str,
    keys: Sequence[str],
    payloads: Sequence[bytes],
    advance: Callable[[int], None],
) -> int:
    """Keyed payloads to a topic; how many Kafka did not acknowledge."""
    from shared.kafka_client import produce_all

    return produce_all(settings.kafka_connection(), topic, list(keys), list(payloads), on_progress=advance)


def _print_generation_summary(data: SyntheticTransactions, elapsed_s: float, write_s: float) -> None:
    from shared.streams.transactions.synthetic import anomaly_counts, segment_summary

    table = Table(title="segments (normal events)")
    rows = segment_summary(data)
    for column in rows[0]:
        table.add_column(column.replace("_", " "), justify="left" if column in ("segment", "top_type") else "right")
    for row in rows:
        table.add_row(*(f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int)
                        else str(value) for value in row.values()))  # fmt: skip
    console.print(table)
    console.print("injected anomalies: " + ", ".join(f"{k}={v:,}" for k, v in anomaly_counts(data).items()))
    console.print(
        f"{len(data):,} events in {elapsed_s:.1f}s ({len(data) / elapsed_s:,.0f} events/s end to end; "
        f"write {len(data) / max(write_s, 1e-9):,.0f} events/s)"
    )


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=1, help="Transactions to stream.")] = 200_000,
    users: Annotated[int, typer.Option(min=1, help="Users behind them.")] = 20_000,
    readings: Annotated[int, typer.Option(min=1, help="Pump sensor readings (metrics stream) to stream.")] = 12_000,
    pumps: Annotated[
        int,
        typer.Option(
            min=1,
            help="Pumps behind them. The metrics version trains on the first half of each pump's readings (every "
            "five minutes) and fits its detectors on the first 70 % of that: keep that part over a day, the load's "
            "cycle, or the other hours read as anomalies (at the defaults, 350 readings: 29 hours).",
        ),
    ] = 12,
    log_lines: Annotated[
        int, typer.Option(min=1, help="Server log lines and session ends (logs stream) to stream.")
    ] = 12_000,
    hosts: Annotated[int, typer.Option(min=1, help="Hosts writing them.")] = 12,
    keep: Annotated[bool, typer.Option("--keep", help="Leave Kafka and Redis running afterwards.")] = False,
) -> None:
    """The main job end to end on the local stack: Kafka + Redis up, events streamed and watched, stack down."""
    from workers.demo import demo_streams, run_demo

    plans = demo_streams(events, users, readings, pumps, log_lines, hosts)
    run_demo(_settings(), plans, keep=keep, console=console)


models_app = typer.Typer(
    help="The model registry: versions per stream, the deployed pointer, thresholds.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

StreamOption = Annotated[str, typer.Option("--stream", help="Which stream's models.")]


def _registry(settings: FleetwatchSettings) -> ModelRegistry:
    from shared.registry import open_registry

    return open_registry(settings)


def _version_or_deployed(registry: ModelRegistry, stream: str, version: int | None) -> int:
    number = version if version is not None else registry.deployed_version(stream)
    if number is None:
        raise FleetwatchError(f"{stream} has no deployed version; name a version")
    return number


@app.command()
def train(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Event files (.jsonl/.parquet/.csv); default: the stream's input topic.")
    ] = None,
    stream: StreamOption = "transactions",
    labels: Annotated[Path | None, typer.Option(help="Ground truth for evaluation and the quality gate.")] = None,
    topic: Annotated[str | None, typer.Option(help="Read this topic instead of the stream's input topic.")] = None,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Publish without moving the pointer.")] = False,
    request: Annotated[
        bool, typer.Option("--request", help="Ask the running trainer service for a round instead.")
    ] = False,
) -> None:
    """One training round: sample, fit every detector, thresholds, evaluate, gate, publish."""
    from workers.trainer import TrainingSource, request_round

    settings = _settings()
    source = TrainingSource(files=[str(f) for f in files or []], topic=topic, labels=str(labels) if labels else None)
    if request:
        settings.stream_settings(stream)  # an unknown stream is refused here, not dropped by the service unseen
        request_round(settings, stream, source, deploy=not no_deploy)
        console.print(f"requested a training round for {stream}{' (not to be deployed)' if no_deploy else ''}")
        return
    _train_and_show(settings, stream, source, deploy=not no_deploy)


def _train_and_show(settings: FleetwatchSettings, stream: str, source: TrainingSource, deploy: bool) -> None:
    """One round with its stages on a spinner, then the evaluation table and the published version."""
    from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

    from shared.detectors.combination import CRITERIA
    from workers.trainer import run_round

    progress = Progress(
        SpinnerColumn(), "[progress.description]{task.description}", TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("starting", total=None)
        outcome = run_round(
            settings,
            _registry(settings),
            stream,
            source,
            deploy=deploy,
            on_stage=lambda stage: progress.update(task, description=stage),
        )
    if outcome.result.evaluation is not None:
        console.print(outcome.result.evaluation.to_markdown(), markup=False)
    if (combination := outcome.manifest.combination) is not None:
        weights = ", ".join(f"{name} {weight:.2f}" for name, weight in combination["weights"].items() if weight)
        how = CRITERIA.get(combination["criterion"], combination["criterion"])
        console.print(f"alert rule: the combined score of {weights}; {how}", markup=False)
    info = outcome.manifest.training
    console.print(
        f"{stream} v{outcome.manifest.version}: {info.rows_train:,} training rows, {info.seconds:.1f}s; "
        f"{'deployed' if outcome.deployed else 'not deployed'} ({outcome.gate.reason})"
    )


@app.command()
def trainer(
    stream: StreamOption = "transactions",
    files: Annotated[
        list[Path] | None, typer.Option("--file", help="Train from these files instead of the topic.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Ground truth for evaluation and the quality gate.")] = None,
    metrics_port: Annotated[
        int, typer.Option(min=1, max=65535, help="HTTP port of /metrics, /healthz and /readyz.")
    ] = 9401,
    spark_master: Annotated[
        str | None, typer.Option(help="Sample and featurize the (Parquet) files with Spark on this master.")
    ] = None,
) -> None:
    """The trainer service: a round every train_interval_s and on request, until SIGTERM."""
    from shared.spark_job import SparkJob
    from workers.trainer import TrainingSource, serve

    # Refused at start: with either flag and no file, every round would fail.
    if spark_master and not files:
        raise FleetwatchError("--spark-master needs --file: Spark reads Parquet files, not the topic")
    if labels and not files:
        raise FleetwatchError(
            "--labels needs --file: the labels name the events of those files, not the ones the topic keeps receiving"
        )
    source = TrainingSource(
        files=[str(f) for f in files or []],
        labels=str(labels) if labels else None,
        spark=SparkJob(master=spark_master) if spark_master else None,
    )
    serve(_settings(), stream, source, metrics_port)


@app.command()
def worker(
    stream: Annotated[
        list[str] | None, typer.Option("--stream", help="Stream(s) to serve (default: worker.streams).")
    ] = None,
    delivery: Annotated[
        str | None, typer.Option(help="exactly_once (default) or at_least_once (faster; may repeat outputs).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Most records per micro-batch.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="HTTP port of /metrics, /healthz, /readyz.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group id.")] = None,
) -> None:
    """A scoring worker: consume, score with every deployed detector, route to alerts/summary/deadletter."""
    from workers.scoring_worker import run_worker

    settings = _settings()
    flags = {"streams": stream, "delivery": delivery, "batch_size": batch_size, "metrics_port": metrics_port,
             "group_id": group}  # fmt: skip
    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        worker_settings = settings.worker.model_validate({**settings.worker.model_dump(), **overrides})
    except ValidationError as exc:
        raise FleetwatchError(_validation_problems(exc)) from exc
    run_worker(settings.model_copy(update={"worker": worker_settings}))


@app.command()
def score(
    input_file: Annotated[Path, typer.Argument(help="Events to score (.jsonl, .parquet or .csv).")],
    out: Annotated[Path, typer.Option(help="Folder for scored.parquet and report.md.")] = Path("scored"),
    version: Annotated[int | None, typer.Option(help="Model version (default: the deployed one).")] = None,
    stream: StreamOption = "transactions",
    top: Annotated[int, typer.Option(min=1, help="How many anomalies the report lists.")] = 20,
) -> None:
    """Batch mode: score a file with a model version, without Kafka; Parquet out plus a markdown report."""
    from workers.batch_scoring import score_file

    if not input_file.exists():
        raise FleetwatchError(f"{input_file}: no such file")
    settings = _settings()
    registry = _registry(settings)
    number = _version_or_deployed(registry, stream, version)
    with console.status(f"scoring {input_file} with v{number} ..."):
        report = score_file(
            registry.load(stream, number), input_file, out, settings.stream_settings(stream).batch_alert_rate, top
        )
    console.print(
        f"{report.events:,} events ({report.malformed:,} malformed): {report.alerts:,} anomalies "
        f"({report.anomaly_rate:.2%}){'; BATCH ALERT' if report.batch_alert else ''}\n"
        f"scored: {report.scored_path}\nreport: {report.report_path}"
    )
    if report.batch_alert:
        raise typer.Exit(4)


spark_app = typer.Typer(
    help="The batch path on Apache Spark (the `spark` extra, Java 17): score and train over Parquet beyond one "
    "machine's memory; local mode by default, --master for a cluster.",
    no_args_is_help=True,
)
app.add_typer(spark_app, name="spark")

ParquetFiles = Annotated[list[Path], typer.Argument(help="Parquet event files (as `fleetwatch generate` writes).")]
MasterOption = Annotated[
    str, typer.Option(help="Spark master: local[N] runs here; spark://host:7077, yarn or k8s://... a cluster.")
]
PartitionsOption = Annotated[
    int | None,
    typer.Option(min=1, help="Partitions by entity (default: one per 100,000 events, at least two per core)."),
]
ConfOption = Annotated[list[str] | None, typer.Option("--conf", help="Any Spark setting as KEY=VALUE (repeatable).")]


def _spark_job(master: str, partitions: int | None, conf: list[str] | None) -> SparkJob:
    from shared.spark_job import SparkJob

    malformed = [item for item in conf or [] if "=" not in item]
    if malformed:
        raise FleetwatchError(f"--conf takes KEY=VALUE, not {', '.join(map(repr, malformed))}")
    pairs = dict(item.split("=", 1) for item in conf or [])
    return SparkJob(master=master, partitions=partitions, conf=pairs)


def _parquet_files(files: list[Path]) -> list[Path]:
    for path in files:
        if path.suffix != ".parquet":
            raise FleetwatchError(f"{path}: the Spark path reads Parquet (`fleetwatch generate --out x.parquet`)")
        if not path.exists():
            raise FleetwatchError(f"{path}: no such file")
    return files


@spark_app.command("score")
def spark_score(
    files: ParquetFiles,
    out: Annotated[Path, typer.Option(help="Folder for scored.parquet/, report.md, charts, insights.")] = Path(
        "scored"
    ),
    version: Annotated[int | None, typer.Option(help="Model version (default: the deployed one).")] = None,
    stream: StreamOption = "transactions",
    top: Annotated[int, typer.Option(min=1, help="How many anomalies the report lists.")] = 20,
    master: MasterOption = "local[2]",
    partitions: PartitionsOption = None,
    conf: ConfOption = None,
) -> None:
    """Batch mode on Spark: every event scored with a verified version, then the same report as `fleetwatch score`."""
    from shared.spark_batch import score_with_spark
    from shared.spark_job import spark_session

    job, files = _spark_job(master, partitions, conf), _parquet_files(files)
    settings = _settings()
    registry = _registry(settings)
    number = _version_or_deployed(registry, stream, version)
    deployed = registry.load(stream, number)
    with console.status(f"scoring {len(files)} file(s) with v{number} on Spark ({master}) ..."):
        result = score_with_spark(
            spark_session(job, app_name="fleetwatch-score"), job, deployed, deployed.stream, files, out,
            settings.stream_settings(stream).batch_alert_rate, top,
        )  # fmt: skip
    summary = result.summary
    console.print(
        f"{summary.events:,} events ({summary.malformed:,} malformed): {summary.alerts:,} anomalies "
        f"({summary.anomaly_rate:.2%}){'; BATCH ALERT' if summary.batch_alert else ''}; {result.partitions} "
        f"partitions, {result.seconds:.1f}s\nscored: {result.scored_path}\nreport: {result.files.report}"
    )
    if summary.batch_alert:
        raise typer.Exit(4)


@spark_app.command("train")
def spark_train(
    files: ParquetFiles,
    stream: StreamOption = "transactions",
    labels: Annotated[Path | None, typer.Option(help="Ground truth for evaluation and the quality gate.")] = None,
    sample_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of entities kept (default: the stream's setting).")
    ] = None,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Publish without moving the pointer.")] = False,
    master: MasterOption = "local[2]",
    partitions: PartitionsOption = None,
    conf: ConfOption = None,
) -> None:
    """One training round whose sample is drawn and featurized by Spark; detectors, gate and publishing as `train`."""
    from workers.trainer import TrainingSource

    job, files = _spark_job(master, partitions, conf), _parquet_files(files)
    settings = _settings()
    if sample_rate is not None:
        configured = settings.stream_settings(stream)
        try:
            tuned = configured.model_validate({**configured.model_dump(), "sample_rate": sample_rate})
        except ValidationError as exc:
            raise FleetwatchError(f"--sample-rate: {exc.errors()[0]['msg']}") from exc
        settings = settings.model_copy(update={"streams": {**settings.streams, stream: tuned}})
    source = TrainingSource(files=[str(f) for f in files], labels=str(labels) if labels else None, spark=job)
    _train_and_show(settings, stream, source, deploy=not no_deploy)


logs_app = typer.Typer(
    help="Seed 002's log workflow on raw log files: train, infer, validate, compare (the logs stream's versions).",
    no_args_is_help=True,
)
app.add_typer(logs_app, name="logs")

FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help="auto (detected per file), a preset (hdfs, bgl, syslog/linux, openssh, apache, plain) or a format "
        "string such as '<Date> <Time> <Pid> <Level> <Component>: <Content>'.",
    ),
]
MaxDepthOption = Annotated[int, typer.Option(min=0, help="Folder levels scanned below a target folder.")]
MaxFilesOption = Annotated[int, typer.Option(min=1, help="Most files read per target (in path order).")]
LogVersionArgument = Annotated[str, typer.Argument(help="A logs version number, or `deployed`.")]


def _log_version(registry: ModelRegistry, version: str) -> int:
    if version == "deployed":
        return _version_or_deployed(registry, "logs", None)
    if not version.isdigit():
        raise FleetwatchError(f"version must be a number or `deployed`, not {version!r}")
    return int(version)


@contextlib.contextmanager
def _log_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A bar while files are parsed, a spinner with the stage's name after."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    with progress:
        task = progress.add_task("starting", total=None)

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total or None)

        yield update


def _checked_scan(log_format: str, max_depth: int, max_files: int) -> ScanOptions:
    """How targets are scanned and parsed; a bad format fails here, before any file is read."""
    from workers.log_workflow import ScanOptions

    scan = ScanOptions(log_format, max_depth, max_files)
    scan.log_format()
    return scan


@logs_app.command("train")
def logs_train(
    target: Annotated[Path, typer.Argument(help="A folder of log files (scanned recursively) or one file.")],
    log_format: FormatOption = "auto",
    max_depth: MaxDepthOption = 3,
    max_files: MaxFilesOption = 50,
    session_pattern: Annotated[
        str, typer.Option(help="Regex whose first match in a line is its session key; '' groups by host windows.")
    ] = r"blk_-?\d+",
    window: Annotated[float, typer.Option(min=1, help="Seconds per host window (lines without a session key).")] = 300,
    host_windows: Annotated[
        HostWindows,
        typer.Option(
            help="Lines without a session key: the host's fixed windows, or each line with its host's "
            "lines of the last --window seconds (sliding; a window never closes)."
        ),
    ] = "fixed",
    idle_timeout: Annotated[float, typer.Option(min=1, help="A session closes after this many idle seconds.")] = 1800,
    max_lines: Annotated[int, typer.Option(min=1, help="A session closes after this many lines.")] = 10_000,
    end_template: Annotated[
        list[str] | None, typer.Option(help="A template (as mined, e.g. 'Deleting block <BLK> file <*>') that closes.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="CSV of session,label (Anomaly/Normal or 1/0) for evaluation and the gate.")
    ] = None,
    incremental: Annotated[
        bool, typer.Option("--incremental", help="Extend a version's templates (--from, default the deployed one).")
    ] = False,
    parent: Annotated[int | None, typer.Option("--from", help="The version --incremental extends.")] = None,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Publish without moving the pointer.")] = False,
) -> None:
    """Parse, mine templates, train every log detector, publish a version (files, lines, sessions, templates)."""
    from shared.streams.logs.sessions import SessionRule
    from workers.log_workflow import LogTrainingRequest, train_logs

    if parent is not None and not incremental:
        raise FleetwatchError("--from names the version --incremental extends; add --incremental")
    rule_flags = (session_pattern != r"blk_-?\d+", window != 300, host_windows != "fixed", idle_timeout != 1800,
                  max_lines != 10_000, bool(end_template))  # fmt: skip
    if incremental and any(rule_flags):
        raise FleetwatchError("--incremental keeps the parent's session rule; leave the session options out")
    try:
        rule = SessionRule(
            session_pattern or None, window, idle_timeout, max_lines, tuple(end_template or ()), host_windows
        )
        re.compile(session_pattern)
    except re.error as exc:
        raise FleetwatchError(f"--session-pattern is not a regular expression: {exc}") from exc
    if not target.exists():
        raise FleetwatchError(f"{target}: no such file or folder")
    scan = _checked_scan(log_format, max_depth, max_files)
    if labels is not None and not labels.exists():
        raise FleetwatchError(f"{labels}: no such file")
    settings = _settings()
    request = LogTrainingRequest(target, scan, rule, labels, parent, incremental, deploy=not no_deploy)
    with _log_progress() as progress:
        outcome = train_logs(settings, _registry(settings), request, progress)
    if outcome.evaluation is not None:
        console.print(outcome.evaluation.to_markdown(), markup=False)
    facts = outcome.facts
    console.print(
        f"logs v{outcome.manifest.version}: {len(facts['files']):,} files, {facts['lines']:,} lines "
        f"({facts['unmatched_lines']:,} unmatched), {facts['sessions']:,} sessions, {facts['templates']:,} templates, "
        f"{facts['start']} to {facts['end']}; {outcome.manifest.training.rows_train:,} training rows, "
        f"{facts['seconds']}s; {'deployed' if outcome.deployed else 'not deployed'} ({outcome.gate.reason})"
        + (f"; extends v{facts['incremental_from']}" if "incremental_from" in facts else ""),
        markup=False,
    )


@logs_app.command("infer")
def logs_infer(
    version: LogVersionArgument,
    targets: Annotated[list[Path], typer.Argument(help="Log files or folders; each gets its own output folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the outputs (one subfolder per target).")] = Path("log-report"),
    log_format: FormatOption = "auto",
    max_depth: MaxDepthOption = 3,
    max_files: MaxFilesOption = 50,
    top: Annotated[int, typer.Option(min=1, help="How many anomalous sessions the report lists.")] = 20,
) -> None:
    """Score log files with a version: parsed.parquet, a result Parquet per detector, hourly analysis, report.md."""
    from workers.log_workflow import infer_logs

    scan = _checked_scan(log_format, max_depth, max_files)
    for target in targets:
        if not target.exists():
            raise FleetwatchError(f"{target}: no such file or folder")
    registry = _registry(_settings())
    loaded = registry.load("logs", _log_version(registry, version))
    with _log_progress() as progress:
        results = infer_logs(loaded, targets, out, scan, top, progress)
    for result in results:
        console.print(
            f"{result.target}: {result.lines:,} lines, {result.sessions:,} sessions, {result.anomalous_sessions:,} "
            f"anomalous, {result.unseen_lines:,} lines of unseen templates; report: {result.report}",
            markup=False,
        )


@logs_app.command("validate")
def logs_validate(
    version: LogVersionArgument,
    target: Annotated[Path, typer.Argument(help="Labelled log files (a file or folder).")],
    labels: Annotated[
        Path | None, typer.Option(help="CSV of session,label (Anomaly/Normal or 1/0); without: the logs are normal.")
    ] = None,
    log_format: FormatOption = "auto",
    max_depth: MaxDepthOption = 3,
    max_files: MaxFilesOption = 50,
) -> None:
    """Session-level precision/recall/F1 per detector and for the fleet, and a quality score out of 100."""
    from workers.log_workflow import read_corpus, read_session_labels, score_logs, validate_logs

    scan = _checked_scan(log_format, max_depth, max_files)
    session_labels = read_session_labels(labels) if labels is not None else None
    registry = _registry(_settings())
    loaded = registry.load("logs", _log_version(registry, version))
    with _log_progress() as progress:
        scored = score_logs(loaded, read_corpus(target, scan, progress))
    console.print(validate_logs(loaded, scored, session_labels).markdown(), markup=False)


@logs_app.command("compare")
def logs_compare(
    a: Annotated[int, typer.Argument(help="Baseline version.")],
    b: Annotated[int, typer.Argument(help="Candidate version.")],
    target: Annotated[Path, typer.Argument(help="Labelled log files (a file or folder).")],
    labels: Annotated[Path, typer.Option(help="CSV of session,label (Anomaly/Normal or 1/0).")],
    log_format: FormatOption = "auto",
    max_depth: MaxDepthOption = 3,
    max_files: MaxFilesOption = 50,
) -> None:
    """Both versions on the same labelled logs, at session level: each metric A → B and the quality scores."""
    from shared.evaluation import render_comparison
    from workers.log_workflow import read_corpus, read_session_labels, score_logs, validate_logs

    scan = _checked_scan(log_format, max_depth, max_files)
    session_labels = read_session_labels(labels)
    registry = _registry(_settings())
    versions = [registry.load("logs", v) for v in (a, b)]
    with _log_progress() as progress:
        corpus = read_corpus(target, scan, progress)
        first, second = (validate_logs(v, score_logs(v, corpus), session_labels) for v in versions)
    assert first.evaluation is not None and second.evaluation is not None
    console.print(
        render_comparison(first.evaluation, second.evaluation, baseline_label=f"v{a}", candidate_label=f"v{b}")
        + f"\nQuality score: v{a} {first.score:.1f}, v{b} {second.score:.1f} (out of 100).",
        markup=False,
    )


@app.command()
def summarizer(
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="HTTP port of /metrics, /healthz, /readyz.")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="faust's local folder (table state is in Kafka).")] = Path(
        ".fleetwatch/summarizer"
    ),
) -> None:
    """Windowed summaries of the scored outputs (faust): window reports, rate alerts, entity escalations."""
    from workers.summarizer import run_summarizer

    settings = _settings()
    if metrics_port is not None:
        settings.summarizer.metrics_port = metrics_port
    run_summarizer(settings, data_dir)


@app.command()
def report(
    scored: Annotated[
        Path | None,
        typer.Argument(help="A scored Parquet written by `fleetwatch score` (default: read topics.reports)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.md and the PNG charts.")] = Path("summary-report"),
    window_s: Annotated[
        int | None,
        typer.Option(min=1, help="Tumbling window size in seconds (default: 3600, or the smallest reported)."),
    ] = None,
    top_n: Annotated[int, typer.Option(min=1, help="Entities in the top-N chart.")] = 10,
) -> None:
    """Markdown and PNG charts over tumbling windows: anomaly rate, detectors, hours, types, segments, entities.

    Without a file, the summarizer's window reports are read from the reports topic."""
    from shared.summary_report import reports_from_scored_parquet, reports_from_topic, write_report
    from shared.windows import WindowSpec

    if scored is None:
        settings = _settings()
        records = reports_from_topic(settings.kafka_connection(), settings.topics.reports)
        source = f"topic {settings.topics.reports}"
    else:
        if not scored.exists():
            raise FleetwatchError(f"{scored}: no such file")
        records = reports_from_scored_parquet(scored, WindowSpec(sizes_s=(window_s or 3600,)))
        source = str(scored)
    if window_s is not None and not any(r["window_s"] == window_s for r in records):
        raise FleetwatchError(
            f"{source}: no {window_s}s window reports (sizes: {sorted({r['window_s'] for r in records})})"
        )
    if not records:
        raise FleetwatchError(f"{source}: no window reports to render")
    path = write_report(records, out, window_s=window_s, top_n=top_n)
    console.print(f"report: {path}")


@models_app.command("list")
def models_list(stream: StreamOption = "transactions") -> None:
    """Every version of the stream, newest last; * marks the deployed one, REFUSED one that does not verify."""
    settings = _settings()
    from shared.registry import RefusedVersion
    from shared.streams.catalog import stream_named

    stream_named(stream)  # an unknown stream is an error, not an empty list
    registry = _registry(settings)
    deployed = registry.deployed_version(stream)
    table = Table(title=f"{stream} model versions")
    for column in ("", "version", "parent", "created", "detectors (mode:threshold)", "rows", "fleet F1", "note"):
        table.add_column(column)
    for entry in registry.versions(stream):
        mark = "*" if entry.version == deployed else ""
        if isinstance(entry, RefusedVersion):
            table.add_row(mark, str(entry.version), "", "", "REFUSED", "", "", entry.reason)
            continue
        manifest = entry
        fleet = (manifest.evaluation or {}).get("fleet", {})
        table.add_row(
            mark,
            str(manifest.version),
            str(manifest.parent_version or ""),
            manifest.created_at[:19],
            ", ".join(f"{d.name}({d.mode[0]}:{d.active_method})" for d in manifest.detectors),
            f"{manifest.training.rows_train:,}",
            f"{fleet['f1']:.3f}" if fleet else "",
            manifest.note,
        )
    console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[int | None, typer.Argument(help="Version number (default: the deployed one).")] = None,
    stream: StreamOption = "transactions",
) -> None:
    """A version's manifest as JSON (signature checked)."""
    import msgspec

    registry = _registry(_settings())
    number = _version_or_deployed(registry, stream, version)
    sys.stdout.write(
        msgspec.json.format(msgspec.json.encode(registry.manifest(stream, number)), indent=2).decode() + "\n"
    )


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="Version to deploy.")], stream: StreamOption = "transactions"
) -> None:
    """Deploy a version (after verifying it loads); workers pick it up through Redis."""
    loaded = _registry(_settings()).promote(stream, version)
    console.print(f"{stream}: deployed v{loaded.version}")


@models_app.command("rollback")
def models_rollback(stream: StreamOption = "transactions") -> None:
    """Deploy the version that was deployed before the current one."""
    rollback = _registry(_settings()).rollback(stream)
    for refused in rollback.skipped:
        console.print(f"{stream}: skipped v{refused.version}: {refused.reason}", markup=False)
    console.print(f"{stream}: rolled back to v{rollback.version}")


@models_app.command("thresholds")
def models_thresholds(
    version: Annotated[int | None, typer.Argument(help="Version (default: the deployed one).")] = None,
    stream: StreamOption = "transactions",
    set_method: Annotated[
        list[str] | None,
        typer.Option("--set", help="DETECTOR=METHOD; makes a new version with these active methods."),
    ] = None,
) -> None:
    """Show every threshold method's value per detector, or change the active ones without retraining."""
    from shared.thresholds import DetectorThresholds, ThresholdMethod

    registry = _registry(_settings())
    number = _version_or_deployed(registry, stream, version)
    if set_method:
        pairs = dict(item.split("=", 1) for item in set_method if "=" in item)
        if len(pairs) != len(set_method):
            raise FleetwatchError("--set takes DETECTOR=METHOD")
        try:
            derived = registry.derive_with_thresholds(stream, number, pairs)
        except ValueError as exc:
            raise FleetwatchError(f"{exc}; methods: {', '.join(m.value for m in ThresholdMethod)}") from exc
        deployed = registry.deployed_version(stream) == derived.version
        console.print(
            f"{stream}: v{derived.version} = v{number} with {derived.note}{' (deployed)' if deployed else ''}"
        )
        number = derived.version
    manifest = registry.manifest(stream, number)
    rates = (manifest.evaluation or {}).get("threshold_methods", {})
    rule = "combined score" if manifest.combination else "any alerting detector below its active threshold"
    table = Table(
        title=f"{stream} v{number} thresholds (offset on score_samples; active marked *)"
        + ("; under each: false-positive rate / recall on the labelled test part" if rates else ""),
        caption=f"alerts by: {rule}",
    )
    table.add_column("detector")
    table.add_column("mode")
    for method in ThresholdMethod:
        table.add_column(method.value, justify="right")
    for entry in manifest.detectors:
        offsets = DetectorThresholds.from_dict(entry.thresholds).offsets
        cells = [
            f"{offsets[m]:.4g}{'*' if m.value == entry.active_method else ''}" + _method_rates(rates, entry.name, m)
            for m in ThresholdMethod
        ]
        table.add_row(entry.name, entry.mode, *cells)
    console.print(table)


def _method_rates(rates: dict[str, dict[str, dict[str, float]]], detector: str, method: str) -> str:
    """A second line under a threshold: its FPR and recall on the version's labelled test part, if measured."""
    measured = rates.get(detector, {}).get(method)
    return f"\n{measured['fpr']:.3f} / {measured['recall']:.2f}" if measured else ""


@models_app.command("compare")
def models_compare(
    a: Annotated[int, typer.Argument(help="Baseline version.")],
    b: Annotated[int, typer.Argument(help="Candidate version.")],
    on: Annotated[Path | None, typer.Option("--on", help="Labelled events file to compare both on.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels of --on (default: beside it).")] = None,
    stream: StreamOption = "transactions",
) -> None:
    """Compare two versions' metrics: as stored, or both re-evaluated on the same labelled file."""
    from shared.evaluation import FleetEvaluation, render_comparison
    from workers.model_comparison import evaluate_version_on_file

    registry = _registry(_settings())
    if on is not None:
        from shared.event_files import labels_path_for

        labels_file = labels or labels_path_for(on)
        first, second = (evaluate_version_on_file(registry.load(stream, v), on, labels_file) for v in (a, b))
    else:
        stored = [registry.manifest(stream, v).evaluation for v in (a, b)]
        if not all(stored):
            raise FleetwatchError("a version has no stored evaluation; compare them --on a labelled file")
        first, second = (FleetEvaluation.from_dict(e) for e in stored if e is not None)
    console.print(render_comparison(first, second, baseline_label=f"v{a}", candidate_label=f"v{b}"), markup=False)


# The benchmark is optional: its package (absent from the image), its extra and its peers, which pip cannot
# resolve together with this project's pins (bench/peers-requirements.txt says why).
BENCH_MODULES = ("bench", "psutil", "quixstreams", "bytewax")
BENCH_INSTALL = (
    "in a source checkout: pip install -e '.[bench]' && pip install --no-deps -r bench/peers-requirements.txt "
    "(bin/setup does both)"
)


@app.command()
def bench(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenarios to run: throughput, latency, reload, scaling, training, memory, streams, deep "
            "(default: all); "
            "or `quality FILES...`: detection quality on ADBench .npz files (no Kafka, no Redis); "
            "or `nab --nab-dir DIR` / `skab --skab-dir DIR`: the public sensor benchmarks (no Kafka, no Redis); "
            "or `logs [DATA_DIR]`: templates on loghub and HDFS sessions on DeepLog's files (default .cache/data)."
        ),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Every scenario at a small size (minutes).")] = False,
    seeds: Annotated[int, typer.Option(min=1, help="quality: splits per file, averaged.")] = 3,
    published: Annotated[
        Path | None,
        typer.Option(help="quality: CSV of published ROC AUCs (header name,<column>,...) to print beside the figures."),
    ] = None,
    nab_dir: Annotated[Path | None, typer.Option(help="nab: a clone of github.com/numenta/NAB.")] = None,
    skab_dir: Annotated[Path | None, typer.Option(help="skab: a clone of github.com/waico/SKAB.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for results.json, report.md, plots, logs (default .fleetwatch/bench; "
            "nab.json / skab.json: bench/results; quality: adbench_quality.json, only when given)."
        ),
    ] = None,
) -> None:
    """The benchmark suite on its own Kafka and Redis (or those FLEETWATCH_KAFKA_BOOTSTRAP/REDIS_URL name)."""
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(f"fleetwatch bench: error: {', '.join(missing)} not installed; {BENCH_INSTALL}\n")
        raise typer.Exit(2)
    from bench.runner import logs_benchmark, public_sensor_benchmark, quality_table, run_bench

    if scenarios and scenarios[0] == "quality":
        table = quality_table(
            [Path(name) for name in scenarios[1:]],
            seeds=seeds,
            published=published,
            out_dir=out,
            on_dataset=lambda name: console.print(f"measuring {name}", style="dim"),
        )
        sys.stdout.write(table + "\n")
        return
    if scenarios and scenarios[0] == "logs":
        logs_data = Path(scenarios[1]) if len(scenarios) > 1 else Path(".cache/data")
        sys.stdout.write(logs_benchmark(logs_data, out, lambda stage: console.print(stage, style="dim")) + "\n")
        return
    if scenarios and scenarios[0] in ("nab", "skab"):
        data_dir = nab_dir if scenarios[0] == "nab" else skab_dir
        if data_dir is None:
            raise FleetwatchError(f"bench {scenarios[0]} needs --{scenarios[0]}-dir (a clone of its repository)")
        tables = public_sensor_benchmark(
            scenarios[0], data_dir, out, lambda name: console.print(f"scoring {name}", style="dim")
        )
        sys.stdout.write(tables + "\n")
        return
    from shared.config import dev_dir
    from shared.local_infra.processes import interrupt_on_sigterm

    configure_logging("console", "WARNING")
    interrupt_on_sigterm()
    run_bench(scenarios or [], quick=quick, out_dir=out or dev_dir() / "bench", console=console)


# --- the operations console ------------------------------------------------------------------------
console_app = typer.Typer(
    help="The operations console: HTTPS API and admin page, users, the audit log, analysts' labels.",
    no_args_is_help=True,
)
app.add_typer(console_app, name="console")


@console_app.command("serve")
def console_serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default 8443).")] = None,
    tls: Annotated[
        bool | None, typer.Option("--tls/--no-tls", help="HTTPS (default; a dev certificate is made on first start).")
    ] = None,
) -> None:
    """Serve the console: alerts and reports fed from Kafka, interventions, audit; until SIGINT/SIGTERM."""
    from workers.console import serve

    settings = _settings()
    given = {"host": host, "port": port, "tls": tls}
    settings.console = settings.console.model_copy(update={k: v for k, v in given.items() if v is not None})
    serve(settings)


@console_app.command("add-user")
def console_add_user(
    username: Annotated[str, typer.Argument(help="The user's login name.")],
    role: Annotated[str, typer.Option(help="viewer, analyst, operator or admin.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input instead of a prompt.")
    ] = False,
) -> None:
    """Create a console user or set a new password and role (argon2id hash in the console store)."""
    from shared.console_auth import Role, UserDirectory
    from shared.console_store import ConsoleStore

    if role not in {r.value for r in Role}:
        raise FleetwatchError(f"--role must be one of {', '.join(r.value for r in Role)}")
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else typer.prompt("password", hide_input=True, confirmation_prompt=True)
    )
    store = ConsoleStore.open(_settings().console.store_url)
    UserDirectory(store).put(username, password, Role(role))
    console.print(f"user {username}: {role}")


@console_app.command("verify-audit")
def console_verify_audit() -> None:
    """Check the audit log's hash chain from the first record; exit 1 at the first broken link."""
    from shared.audit_log import verify_store
    from shared.console_store import ConsoleStore

    verdict = verify_store(ConsoleStore.open(_settings().console.store_url, create=False))
    if not verdict.ok:
        console.print(f"audit chain BROKEN at record {verdict.first_bad_seq}: {verdict.problem}")
        raise typer.Exit(1)
    console.print(f"audit chain intact: {verdict.checked} records")


@console_app.command("export-labels")
def console_export_labels(
    out: Annotated[Path, typer.Argument(help="Labels file to write (.jsonl), the format `train --labels` reads.")],
    base: Annotated[
        Path | None, typer.Option(help="Labels of a whole events file; analysts' verdicts override its rows.")
    ] = None,
) -> None:
    """Write the analysts' true/false-positive verdicts as a labels file for `fleetwatch train --labels`."""
    import msgspec

    from shared.console_store import ConsoleStore
    from shared.event_files import read_labels
    from shared.interventions import labels_for_trainer

    store = ConsoleStore.open(_settings().console.store_url, create=False)
    rows = {row["event_id"]: row for row in labels_for_trainer(store)}
    merged = {}
    if base is not None:
        merged = {
            event_id: {"event_id": event_id, "is_anomaly": is_anomaly, "anomaly_kind": kind}
            for event_id, (is_anomaly, kind) in read_labels(base).items()
        }
    merged.update(rows)
    out.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in merged.values()))
    console.print(f"{out}: {len(merged)} labels, {len(rows)} from analysts")


def main() -> None:
    """Entry point: usage and user errors become one line on stderr; programming errors keep their traceback."""
    try:
        exit_code = app(standalone_mode=False)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except typer.exceptions.TyperException as exc:  # click's usage errors, as vendored by typer
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "fleetwatch"
        sys.stderr.write(f"{command}: error: {exc.format_message()}\n")
        sys.exit(getattr(exc, "exit_code", 2))
    except FleetwatchError as exc:
        sys.stderr.write(f"fleetwatch: error: {exc}\n")
        sys.exit(1)
    except Exception as exc:  # a Redis the command cannot use, or an unreadable input; anything else re-raises
        message = _redis_error_line(exc) or _input_error_line(exc)
        if message is None:
            raise
        sys.stderr.write(f"fleetwatch: error: {message}\n")
        sys.exit(1)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


def _redis_error_line(exc: Exception) -> str | None:
    """The one line for an unreachable or refusing Redis (the registry, states and notices live there); None for
    any other error. Imported here: most commands never touch Redis, and the CLI starts without it."""
    import redis

    if isinstance(exc, redis.exceptions.AuthenticationError):
        return f"Redis refused the credentials ({exc}); check the user and password in FLEETWATCH_REDIS_URL"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return (
            f"cannot reach Redis ({exc}); locally, start the stack with `fleetwatch dev up`; "
            "elsewhere, point FLEETWATCH_REDIS_URL at a running server"
        )
    return None


def _input_error_line(exc: Exception) -> str | None:
    """The one line for a file the command cannot read or write (missing, a folder, not writable, not Parquet,
    not JSON, not text); None for any other error."""
    import msgspec
    import pyarrow

    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, pyarrow.ArrowException):
        return f"cannot read the file as a table: {exc}"
    if isinstance(exc, msgspec.DecodeError | UnicodeDecodeError):
        return f"cannot decode the file: {exc}"
    return None


if __name__ == "__main__":
    main()
