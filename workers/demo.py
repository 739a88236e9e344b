"""`fleetwatch demo`: the whole system end to end on the local stack, for a newcomer's first look.

Kafka + Redis come up on loopback; a labelled synthetic history is generated; the trainer fits v1 on
its first third (deployed) and v2 on its first half (newer data, kept back); two scoring workers start; every
event of the history streams through them while a live table shows what comes out; halfway, v2 is
promoted and the workers hot-reload it; the run ends with throughput, precision and recall against
the ground truth, and which version scored what. Workers and the stack are stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.config import FleetwatchSettings, dev_dir
from shared.event_files import chunk_bounds
from shared.kafka_client import consumer, produce_all, topic_partitions
from shared.local_infra import dev_stack
from shared.local_infra.processes import free_port
from shared.output_records import decode_output
from shared.registry import open_registry
from shared.streams.transactions import synthetic
from shared.streams.transactions.files import transaction_payloads, write_labels, write_transactions
from workers.trainer import TrainingSource, run_round

MALFORMED = [b"{not json", b'{"event_id": "demo-bad", "amount": "lots"}']


@dataclass
class Tally:
    """What has come out of the workers for this run, read as a read_committed consumer sees it."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_version: Counter[int] = field(default_factory=Counter)
    alerted: set[str] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    first_at_version: dict[int, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def _tail_outputs(settings: FleetwatchSettings, run_prefix: str, tally: Tally, stop: threading.Event) -> None:
    connection = settings.kafka_connection()
    topics = {settings.topics.alerts: "alert", settings.streams["transactions"].summary_topic: "summary",
              settings.topics.deadletter: "deadletter"}  # fmt: skip
    reader = consumer(connection, group_id=f"fleetwatch-demo-{uuid.uuid4().hex[:8]}")
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
                tally.outcomes[outcome] += 1
                continue
            record = decode_output(message.value() or b"")
            event_id = msgspec.json.decode(record.event)["event_id"]
            if not event_id.startswith(run_prefix):
                continue
            tally.outcomes[outcome] += 1
            tally.by_version[record.model_version] += 1
            tally.first_at_version.setdefault(record.model_version, now)
            tally.first_at = tally.first_at or now
            tally.last_at = now
            if outcome == "alert":
                tally.alerted.add(event_id)
    reader.close()


def _progress_table(tally: Tally, produced: int, expected: int, note: str) -> Table:
    table = Table(title="fleetwatch demo: events through 2 scoring workers")
    for column in ("produced", "scored", "alerts", "summaries", "dead letters", "by version", "events/s"):
        table.add_column(column, justify="right")
    elapsed = (tally.last_at or 0) - (tally.first_at or 0)
    rate = (tally.outcomes["alert"] + tally.outcomes["summary"]) / elapsed if elapsed > 0 else 0.0
    table.add_row(
        f"{produced:,}/{expected:,}",
        f"{tally.total:,}",
        f"{tally.outcomes['alert']:,}",
        f"{tally.outcomes['summary']:,}",
        f"{tally.outcomes['deadletter']:,}",
        ", ".join(f"v{v}: {n:,}" for v, n in sorted(tally.by_version.items())),
        f"{rate:,.0f}",
    )
    table.caption = note
    return table


def _training_file(data: synthetic.SyntheticTransactions, rows: int, path: Path) -> TrainingSource:
    """The first `rows` events of the history and their labels, as files the trainer reads."""
    history = synthetic.SyntheticTransactions(
        {name: values[:rows] for name, values in data.columns.items()}, data.is_anomaly[:rows], data.anomaly_kind[:rows]
    )
    labels = path.with_name(f"{path.stem}.labels.jsonl")
    write_transactions(history, path)
    write_labels(history, labels)
    return TrainingSource(files=[str(path)], labels=str(labels))


def _start_worker(settings: FleetwatchSettings, index: int, log_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "FLEETWATCH_WORKER__METRICS_PORT": str(free_port()), "FLEETWATCH_LOG_FORMAT": "json",
           "FLEETWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "FLEETWATCH_REDIS_URL": settings.redis_url,
           "FLEETWATCH_REDIS_PREFIX": settings.redis_prefix}  # fmt: skip
    log = (log_dir / f"worker-{index}.log").open("ab")
    fleetwatch = str(Path(sys.executable).with_name("fleetwatch"))
    return subprocess.Popen([fleetwatch, "worker"], env=env, stdout=log, stderr=log)


def run_demo(settings: FleetwatchSettings, events: int, users: int, keep: bool, console: Console) -> None:
    work = dev_dir() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    with console.status("bringing up Kafka (KRaft) and Redis on loopback ..."):
        stack = dev_stack.up(settings)
    console.print(stack.connection_lines().strip())
    seed = int(time.time()) % 100_000
    # A Redis namespace of its own: this run's registry numbering and user profiles start empty.
    settings = settings.model_copy(
        update={
            "kafka_bootstrap": stack.kafka_bootstrap,
            "redis_url": stack.redis_url,
            "redis_prefix": f"{settings.redis_prefix}demo-{seed}:",
        }
    )
    workers: list[subprocess.Popen] = []
    stop_tail = threading.Event()
    try:
        with console.status(f"generating {events:,} labelled transactions for {users:,} users ..."):
            data = synthetic.generate_transactions(synthetic.GeneratorSpec(users=users, events=events, seed=seed))
        registry = open_registry(settings)
        versions = []
        for label, share, deploy in (("v1 (deployed now)", 3, True), ("v2 (promoted mid-stream)", 2, False)):
            rows = events // share
            with console.status(f"training {label} on the first {rows:,} events ..."):
                source = _training_file(data, rows, work / f"train-{seed}-{rows}.jsonl")
                outcome = run_round(settings, registry, "transactions", source, deploy=deploy)
            versions.append(outcome.manifest.version)
            fleet = (outcome.manifest.evaluation or {}).get("fleet", {})
            console.print(
                f"trained v{outcome.manifest.version} in {outcome.manifest.training.seconds:.0f}s (held-out fleet "
                f"precision {fleet.get('precision', 0):.2f}, recall {fleet.get('recall', 0):.2f})"
            )
        first, second = versions

        tally = Tally()
        tail = threading.Thread(target=_tail_outputs, args=(settings, f"tx{seed}-", tally, stop_tail), daemon=True)
        tail.start()
        workers = [_start_worker(settings, i, work) for i in (1, 2)]
        produced = 0

        def produce() -> None:
            nonlocal produced
            connection = settings.kafka_connection()
            produce_all(connection, settings.streams["transactions"].input_topic, ["bad"] * len(MALFORMED), MALFORMED)
            for start, stop in chunk_bounds(len(data), 20_000):
                keys = data.columns["user_id"][start:stop].tolist()
                produce_all(
                    connection,
                    settings.streams["transactions"].input_topic,
                    keys,
                    transaction_payloads(data, start, stop),
                )
                produced = stop

        threading.Thread(target=produce, daemon=True).start()
        note = f"v{first} serving; v{second} is promoted when half the events are scored"
        promoted_at: float | None = None
        pickup_reported = False
        with Live(_progress_table(tally, produced, len(data), note), console=console, refresh_per_second=4) as live:
            deadline = time.monotonic() + 900
            while tally.outcomes["alert"] + tally.outcomes["summary"] < len(data) and time.monotonic() < deadline:
                if promoted_at is None and tally.total >= len(data) // 2:
                    registry.promote("transactions", second)
                    promoted_at = time.monotonic()
                    note = f"promoted v{second} at {tally.total:,} scored events"
                if promoted_at is not None and second in tally.first_at_version and not pickup_reported:
                    pickup_ms = 1000 * (tally.first_at_version[second] - promoted_at)
                    note += f"; first output by v{second} {pickup_ms:.0f} ms later"
                    pickup_reported = True
                for process in workers:
                    if process.poll() is not None:
                        raise RuntimeError(f"a worker exited (code {process.returncode}); see {work}/worker-*.log")
                live.update(_progress_table(tally, produced, len(data), note))
                time.sleep(0.25)
            live.update(_progress_table(tally, produced, len(data), note))
        _print_summary(console, data, seed, tally, (first, second))
        console.print(f"worker logs: {work}/worker-1.log, worker-2.log")
    finally:
        stop_tail.set()
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=30)
        if not keep:
            console.print("\n".join(dev_stack.down(purge=False)))


def _print_summary(
    console: Console, data: synthetic.SyntheticTransactions, seed: int, tally: Tally, versions: tuple[int, int]
) -> None:
    anomalies = {event_id for event_id, flag in zip(data.columns["event_id"].tolist(), data.is_anomaly.tolist(),
                                                    strict=True) if flag}  # fmt: skip
    true_positives = len(tally.alerted & anomalies)
    precision = true_positives / max(len(tally.alerted), 1)
    recall = true_positives / max(len(anomalies), 1)
    scored = tally.outcomes["alert"] + tally.outcomes["summary"]
    elapsed = (tally.last_at or 0) - (tally.first_at or 0)
    table = Table(title="summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("events scored", f"{scored:,} of {len(data):,}"),
        ("throughput (2 workers, exactly-once)", f"{scored / elapsed:,.0f} events/s" if elapsed else "-"),
        ("alerts", f"{tally.outcomes['alert']:,}"),
        ("dead letters (malformed input)", f"{tally.outcomes['deadletter']:,}"),
        ("injected anomalies", f"{len(anomalies):,}"),
        ("precision vs ground truth", f"{precision:.3f}"),
        ("recall vs ground truth", f"{recall:.3f}"),
        *((f"scored by v{v}", f"{tally.by_version[v]:,}") for v in versions),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
