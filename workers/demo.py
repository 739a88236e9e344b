"""`fleetwatch demo`: the whole system end to end on the local stack, for a newcomer's first look.

Kafka + Redis come up on loopback; a labelled synthetic history is generated for three streams:
transactions, pump sensor readings (metrics) and HDFS-like server log lines with their sessions' end
records (logs). The trainer fits transactions v1 on the first third of its history (deployed) and v2 on
its first half (newer data, kept back), and metrics v1 and logs v1 on the first half of theirs (deployed);
two scoring workers start, each serving every stream; every event of every history streams through them
side by side while a live table shows what comes out; halfway, transactions v2 is promoted and the workers
hot-reload it; the run ends with throughput, precision and recall against the ground truth per stream, and
which version scored what. Workers and the stack are stopped at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.config import FleetwatchSettings, dev_dir, topic_environment
from shared.event_files import labels_path_for, write_labels, write_payloads
from shared.kafka_client import consumer, produce_all, topic_partitions
from shared.local_infra import dev_stack
from shared.local_infra.processes import free_port
from shared.output_records import decode_output
from shared.pipeline import SyntheticEvents
from shared.registry import ModelRegistry, open_registry
from shared.streams.catalog import stream_named
from workers.trainer import TrainingSource, run_round

PRODUCE_CHUNKS = 10  # each stream's history goes out in this many chunks, the streams' chunks in turn


@dataclass(frozen=True)
class DemoStream:
    """What the demo does with one stream: how much history it draws, which versions it trains, what bad input
    it sends first."""

    name: str
    events: int
    entities: int
    anomaly_rate: float
    # Each version trains on the first 1/n of the history; the first is deployed, the others are promoted (in
    # this order) once half the stream's events are scored, so the workers hot-reload them mid-stream.
    history_shares: tuple[int, ...]
    malformed: tuple[bytes, ...]


def demo_streams(events: int, users: int, readings: int, pumps: int, log_lines: int, hosts: int) -> list[DemoStream]:
    return [
        DemoStream("transactions", events, users, 0.01, (3, 2),
                   (b"{not json", b'{"event_id": "demo-bad", "amount": "lots"}')),
        DemoStream("metrics", readings, pumps, 0.04, (2,),
                   (b"{not json", b'{"event_id": "demo-bad-reading", "asset_id": "pump-000", '
                                  b'"timestamp": "2026-10-01T00:00:00Z", "values": {"flow_m3h": "high"}}')),
        DemoStream("logs", log_lines, hosts, 0.05, (2,),
                   (b"{not json", b'{"event_id": "demo-bad-line", "source_host": "dn-000", '
                                  b'"timestamp": "2026-10-01T00:00:00Z"}')),
    ]  # fmt: skip


@dataclass
class Tally:
    """What has come out of the workers for one stream in this run, read as a read_committed consumer sees it."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_version: Counter[int] = field(default_factory=Counter)
    scored_ids: set[str] = field(default_factory=set)  # alerted or summarized: one output per event is the promise
    alerted: set[str] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    first_at_version: dict[int, float] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return self.outcomes["alert"] + self.outcomes["summary"]

    @property
    def events_per_s(self) -> float:
        elapsed = (self.last_at or 0) - (self.first_at or 0)
        return self.scored / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class DemoRun:
    """One stream's run: its plan, its generated history (ground truth apart), its versions, what came out."""

    plan: DemoStream
    history: SyntheticEvents
    event_ids: frozenset[str]
    versions: list[int]
    tally: Tally = field(default_factory=Tally)

    @property
    def expected(self) -> int:
        return len(self.history.payloads)

    @property
    def outstanding(self) -> int:
        """Inputs, malformed ones too, whose output has not come yet."""
        tally = self.tally
        return self.expected + len(self.plan.malformed) - tally.scored - tally.outcomes["deadletter"]


def _tail_outputs(settings: FleetwatchSettings, runs: dict[str, DemoRun], stop: threading.Event) -> None:
    connection = settings.kafka_connection()
    topics = {settings.topics.alerts: "alert", settings.topics.deadletter: "deadletter"}
    topics |= {settings.streams[name].summary_topic: "summary" for name in runs}
    reader = consumer(connection, group_id=f"fleetwatch-demo-{os.getpid()}-{time.time_ns()}")
    assignment = []
    for topic in topics:
        for partition in topic_partitions(connection, topic):
            _, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assignment.append(TopicPartition(topic, partition, high))  # only this run's outputs
    reader.assign(assignment)
    while not stop.is_set():
        for message in reader.consume(num_messages=5000, timeout=0.2):
            if message.error() is not None:
                continue
            outcome = topics[message.topic() or ""]
            now = time.monotonic()
            if outcome == "deadletter":
                stream = dict(message.headers() or []).get("fleetwatch.stream")
                if isinstance(stream, bytes) and stream.decode() in runs:
                    runs[stream.decode()].tally.outcomes[outcome] += 1
                continue
            record = decode_output(message.value() or b"")
            run = runs.get(record.stream)
            event_id = msgspec.json.decode(record.event)["event_id"]
            if run is None or event_id not in run.event_ids:
                continue  # another run's output: not this demo's to count
            tally = run.tally
            tally.outcomes[outcome] += 1
            tally.scored_ids.add(event_id)
            tally.by_version[record.model_version] += 1
            tally.first_at_version.setdefault(record.model_version, now)
            tally.first_at = tally.first_at or now
            tally.last_at = now
            if outcome == "alert":
                tally.alerted.add(event_id)
    reader.close()


def _progress_table(runs: dict[str, DemoRun], produced: Counter[str], note: str) -> Table:
    table = Table(title=f"fleetwatch demo: {len(runs)} streams through 2 scoring workers")
    table.add_column("stream")
    for column in ("produced", "scored", "alerts", "summaries", "dead letters", "by version", "events/s"):
        table.add_column(column, justify="right")
    for name, run in runs.items():
        tally = run.tally
        table.add_row(
            name,
            f"{produced[name]:,}/{run.expected:,}",
            f"{tally.scored:,}",
            f"{tally.outcomes['alert']:,}",
            f"{tally.outcomes['summary']:,}",
            f"{tally.outcomes['deadletter']:,}",
            ", ".join(f"v{v}: {n:,}" for v, n in sorted(tally.by_version.items())),
            f"{tally.events_per_s:,.0f}",
        )
    table.caption = note
    return table


def _training_files(history: SyntheticEvents, rows: int, path: Path) -> TrainingSource:
    """The first `rows` events of the history as a JSONL file of payloads, and their labels beside it."""
    write_payloads(history.payloads[:rows], path)
    labels = labels_path_for(path)
    write_labels(labels, history.event_id[:rows], history.is_anomaly[:rows], history.anomaly_kind[:rows])
    return TrainingSource(files=[str(path)], labels=str(labels))


def _worker_environment(settings: FleetwatchSettings) -> dict[str, str]:
    """The demo's settings as the variables a `fleetwatch worker` reads: the same stack, namespace, topics, streams."""
    shared_topics = {"alerts": settings.topics.alerts, "deadletter": settings.topics.deadletter,
                     "reports": settings.topics.reports}  # fmt: skip
    per_stream = {
        variable: value
        for name in settings.worker.streams
        for variable, value in topic_environment(
            {"input": settings.streams[name].input_topic, "summary": settings.streams[name].summary_topic}, name
        ).items()
    }
    return {
        **os.environ,
        "FLEETWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLEETWATCH_REDIS_URL": settings.redis_url,
        "FLEETWATCH_REDIS_PREFIX": settings.redis_prefix,
        "FLEETWATCH_WORKER__STREAMS": json.dumps(settings.worker.streams),
        "FLEETWATCH_WORKER__GROUP_ID": settings.worker.group_id,
        "FLEETWATCH_LOG_FORMAT": "json",
        **topic_environment(shared_topics),
        **per_stream,
    }


def _start_worker(environment: dict[str, str], index: int, log_dir: Path) -> subprocess.Popen:
    log = (log_dir / f"worker-{index}.log").open("ab")
    fleetwatch = str(Path(sys.executable).with_name("fleetwatch"))
    environment = {**environment, "FLEETWATCH_WORKER__METRICS_PORT": str(free_port())}
    return subprocess.Popen([fleetwatch, "worker"], env=environment, stdout=log, stderr=log)


def run_demo(settings: FleetwatchSettings, plans: list[DemoStream], keep: bool, console: Console) -> dict[str, DemoRun]:
    with console.status("bringing up Kafka (KRaft) and Redis on loopback ..."):
        stack = dev_stack.up(settings)
    console.print(stack.connection_lines().strip())
    seed = int(time.time()) % 100_000
    # A Redis namespace of its own: this run's registry numbering, user profiles and sensor windows start empty.
    dump = settings.model_dump()
    served = sorted({*settings.worker.streams, *(plan.name for plan in plans)})
    settings = FleetwatchSettings.model_validate(
        dump | {
            "kafka_bootstrap": stack.kafka_bootstrap,
            "redis_url": stack.redis_url,
            "redis_prefix": f"{settings.redis_prefix}demo-{seed}:",
            "worker": dump["worker"] | {"streams": served},
        }
    )  # fmt: skip
    try:
        return drive_demo(settings, plans, seed, dev_dir() / "demo", console)
    finally:
        if not keep:
            console.print("\n".join(dev_stack.down(purge=False)))


def drive_demo(
    settings: FleetwatchSettings,
    plans: list[DemoStream],
    seed: int,
    work: Path,
    console: Console,
    timeout_s: float = 900.0,
) -> dict[str, DemoRun]:
    """Train, start two workers on `settings` (whose worker streams include every plan's), stream every history
    through them with a live table until all is scored or `timeout_s` passed, print the summary; what came out,
    per stream."""
    work.mkdir(parents=True, exist_ok=True)
    registry = open_registry(settings)
    runs = {plan.name: _generate_and_train(settings, registry, plan, seed, work, console) for plan in plans}
    workers: list[subprocess.Popen] = []
    stop_tail = threading.Event()
    try:
        tail = threading.Thread(target=_tail_outputs, args=(settings, runs, stop_tail), daemon=True)
        tail.start()
        environment = _worker_environment(settings)
        workers = [_start_worker(environment, i, work) for i in (1, 2)]
        produced: Counter[str] = Counter()

        def produce() -> None:
            connection = settings.kafka_connection()
            for name, run in runs.items():
                topic = settings.streams[name].input_topic
                produce_all(connection, topic, ["bad"] * len(run.plan.malformed), list(run.plan.malformed))
            for chunk in range(PRODUCE_CHUNKS):
                for name, run in runs.items():
                    size = math.ceil(run.expected / PRODUCE_CHUNKS)
                    start, stop = chunk * size, min((chunk + 1) * size, run.expected)
                    history = run.history
                    produce_all(connection, settings.streams[name].input_topic, history.keys[start:stop],
                                history.payloads[start:stop])  # fmt: skip
                    produced[name] = max(stop, produced[name])

        threading.Thread(target=produce, daemon=True).start()
        to_promote = [(name, version) for name, run in runs.items() for version in run.versions[1:]]
        note = "; ".join(
            f"{name} v{run.versions[0]} serving" + "".join(f", v{v} promoted at half" for v in run.versions[1:])
            for name, run in runs.items()
        )
        promoted: dict[tuple[str, int], float] = {}
        picked_up: set[tuple[str, int]] = set()
        with Live(_progress_table(runs, produced, note), console=console, refresh_per_second=4) as live:
            deadline = time.monotonic() + timeout_s
            while any(run.outstanding > 0 for run in runs.values()) and time.monotonic() < deadline:
                for name, version in to_promote:
                    run, key = runs[name], (name, version)
                    if key not in promoted and run.tally.scored >= run.expected // 2:
                        registry.promote(name, version)
                        promoted[key] = time.monotonic()
                        note = f"promoted {name} v{version} at {run.tally.scored:,} scored events"
                    first_output = run.tally.first_at_version.get(version)
                    if key in promoted and key not in picked_up and first_output is not None:
                        note += f"; first output by v{version} {1000 * (first_output - promoted[key]):.0f} ms later"
                        picked_up.add(key)
                for process in workers:
                    if process.poll() is not None:
                        raise RuntimeError(f"a worker exited (code {process.returncode}); see {work}/worker-*.log")
                live.update(_progress_table(runs, produced, note))
                time.sleep(0.25)
            live.update(_progress_table(runs, produced, note))
        _print_summary(console, runs)
        console.print(f"worker logs: {work}/worker-1.log, worker-2.log")
        return runs
    finally:
        stop_tail.set()
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=30)


def _generate_and_train(
    settings: FleetwatchSettings, registry: ModelRegistry, plan: DemoStream, seed: int, work: Path, console: Console
) -> DemoRun:
    stream = stream_named(plan.name)
    with console.status(f"generating {plan.events:,} labelled {plan.name} events of {plan.entities:,} entities ..."):
        history = stream.synthetic(plan.events, plan.entities, plan.anomaly_rate, seed)
    versions = []
    for position, share in enumerate(plan.history_shares):
        rows = plan.events // share
        deploy = position == 0
        with console.status(f"training {plan.name} on the first {rows:,} events ..."):
            source = _training_files(history, rows, work / f"train-{plan.name}-{seed}-{rows}.jsonl")
            outcome = run_round(settings, registry, plan.name, source, deploy=deploy)
        versions.append(outcome.manifest.version)
        fleet = (outcome.manifest.evaluation or {}).get("fleet", {})
        console.print(
            f"trained {plan.name} v{outcome.manifest.version} ({'deployed' if deploy else 'promoted mid-stream'}) "
            f"in {outcome.manifest.training.seconds:.0f}s (held-out fleet precision {fleet.get('precision', 0):.2f}, "
            f"recall {fleet.get('recall', 0):.2f})"
        )
    return DemoRun(plan, history, frozenset(history.event_id.tolist()), versions)


def _print_summary(console: Console, runs: dict[str, DemoRun]) -> None:
    table = Table(title="summary")
    table.add_column("figure")
    for name in runs:
        table.add_column(name, justify="right")
    figures: dict[str, list[str]] = {}
    for run in runs.values():
        tally = run.tally
        anomalies = set(run.history.event_id[run.history.is_anomaly].tolist())
        true_positives = len(tally.alerted & anomalies)
        rates = tally.events_per_s
        for figure, value in (
            ("events scored", f"{tally.scored:,} of {run.expected:,}"),
            ("throughput (2 workers, exactly-once, streams side by side)", f"{rates:,.0f} events/s" if rates else "-"),
            ("alerts", f"{tally.outcomes['alert']:,}"),
            ("dead letters (malformed input)", f"{tally.outcomes['deadletter']:,} of {len(run.plan.malformed)}"),
            ("injected anomalies (labelled events)", f"{len(anomalies):,}"),
            ("precision vs ground truth", f"{true_positives / max(len(tally.alerted), 1):.3f}"),
            ("recall vs ground truth", f"{true_positives / max(len(anomalies), 1):.3f}"),
            ("scored by version", ", ".join(f"v{v}: {tally.by_version[v]:,}" for v in run.versions)),
        ):
            figures.setdefault(figure, []).append(value)
    for figure, values in figures.items():
        table.add_row(figure, *values)
    console.print(table)
