"""`fleetwatch demo`: the end-to-end run on the local stack, for a newcomer's first look.

Brings up Kafka + Redis on loopback, streams synthetic transactions into the input topic, watches
them arrive through a consumer group with a live table, and takes the stack down again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared import synthetic
from shared.config import FleetwatchSettings
from shared.event_files import chunk_bounds, transaction_payloads
from shared.kafka_client import consumer, produce_all
from shared.local_infra import dev_stack


class _ArrivalCounts:
    def __init__(self) -> None:
        self.by_segment: Counter[str] = Counter()
        self.partitions: set[int] = set()
        self.total = 0
        self.first_at: float | None = None


def _arrivals_table(counts: _ArrivalCounts, expected: int, produced: int) -> Table:
    elapsed = time.monotonic() - counts.first_at if counts.first_at else 0.0
    table = Table(title=f"events arriving on the input topic ({len(counts.partitions)} partitions seen)")
    table.add_column("segment")
    table.add_column("events", justify="right")
    for segment, count in sorted(counts.by_segment.items()):
        table.add_row(segment, f"{count:,}")
    rate = counts.total / elapsed if elapsed else 0.0
    table.caption = f"produced {produced:,} / {expected:,}; consumed {counts.total:,} ({rate:,.0f} events/s)"
    return table


def run_demo(settings: FleetwatchSettings, events: int, users: int, keep: bool, console: Console) -> None:
    with console.status("bringing up Kafka (KRaft) and Redis on loopback ..."):
        stack = dev_stack.up(settings)
    console.print(stack.connection_lines().strip())
    settings = settings.model_copy(update={"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url})
    connection = settings.kafka_connection()
    topic = settings.topics.transactions
    try:
        data = synthetic.generate_transactions(
            synthetic.GeneratorSpec(users=users, events=events, seed=int(time.time()))
        )
        counts = _ArrivalCounts()
        produced = 0
        reader = consumer(
            connection, group_id=f"fleetwatch-demo-{uuid.uuid4().hex[:8]}", **{"auto.offset.reset": "latest"}
        )
        assigned = threading.Event()
        reader.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.set())
        while not assigned.is_set():
            reader.poll(0.2)

        def advance(done: int) -> None:
            nonlocal produced
            produced += done

        def produce() -> None:
            for start, stop in chunk_bounds(len(data), 50_000):
                keys = data.columns["user_id"][start:stop].tolist()
                produce_all(connection, topic, keys, transaction_payloads(data, start, stop), on_progress=advance)

        producer_thread = threading.Thread(target=produce, daemon=True)
        producer_thread.start()
        with Live(_arrivals_table(counts, events, produced), console=console, refresh_per_second=4) as live:
            deadline = time.monotonic() + 300
            while counts.total < events and time.monotonic() < deadline:
                for message in reader.consume(num_messages=5000, timeout=0.25):
                    if message.error() is not None:
                        continue
                    counts.first_at = counts.first_at or time.monotonic()
                    counts.total += 1
                    counts.partitions.add(int(message.partition() or 0))
                    counts.by_segment[msgspec.json.decode(message.value() or b"{}").get("segment", "?")] += 1
                live.update(_arrivals_table(counts, events, produced))
        reader.close()
        producer_thread.join()
        console.print(f"[green]{counts.total:,} of {events:,} events arrived[/green]")
    finally:
        if not keep:
            console.print("\n".join(dev_stack.down(purge=False)))
