"""The input every contender gets: synthetic transactions, produced once up front or paced at a rate.

Payloads are generated once per run (seed 001's generator, the JSON a producer would send), so every
contender reads the very same bytes. The paced producer remembers each record's produce timestamp by
(partition, offset) from its delivery reports, which is what end-to-end latency is measured from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Message

from shared.event_files import chunk_bounds
from shared.kafka_client import DeliveryTrackingProducer, KafkaConnection, produce_all, producer_config
from shared.streams.transactions.files import transaction_payloads
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions


@dataclass(frozen=True)
class Workload:
    payloads: list[bytes]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.payloads)


def synthetic_workload(events: int, seed: int = 7) -> Workload:
    """`events` transactions of events/10 users (the generator's labels are not needed here)."""
    data = generate_transactions(GeneratorSpec(users=max(events // 10, 10), events=events, seed=seed))
    return Workload(transaction_payloads(data, 0, len(data)), data.columns["user_id"].tolist())


def preload(
    kafka: KafkaConnection, topic: str, workload: Workload, on_progress: Callable[[int], None] = lambda done: None
) -> None:
    """Produce the whole workload to `topic` and wait for every acknowledgement."""
    failed = 0
    for start, stop in chunk_bounds(len(workload), 200_000):
        failed += produce_all(kafka, topic, workload.keys[start:stop], workload.payloads[start:stop], on_progress)
    if failed:
        raise RuntimeError(f"{failed} of {len(workload)} input records were not acknowledged")


@dataclass
class PacedProducer:
    """Produces the workload round and round at `rate` events/s until stopped (bounded by `max_seconds`)."""

    kafka: KafkaConnection
    topic: str
    workload: Workload
    rate: float
    max_seconds: float = 600.0
    produced_at_ms: dict[tuple[int, int], int] = field(default_factory=dict)  # (partition, offset) -> CreateTime
    produced: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    def __enter__(self) -> PacedProducer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def _on_delivered(self, message: Message) -> None:
        _, stamp = message.timestamp()
        self.produced_at_ms[(int(message.partition() or 0), int(message.offset() or 0))] = stamp

    def _run(self) -> None:
        writer = DeliveryTrackingProducer(producer_config(self.kafka, **{"linger.ms": 1}), self._on_delivered)
        started = time.monotonic()
        window_start, sent_in_window, rate = started, 0, self.rate
        index = 0
        # Pacing needs a per-record produce call: confluent-kafka has no batch produce.
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            now = time.monotonic()
            if self.rate != rate:  # a new level starts its own schedule
                window_start, sent_in_window, rate = now, 0, self.rate
            due = int((now - window_start) * rate) - sent_in_window
            for _ in range(max(due, 0)):
                position = index % len(self.workload)
                writer.produce(self.topic, value=self.workload.payloads[position], key=self.workload.keys[position])
                index += 1
                sent_in_window += 1
                self.produced += 1
            time.sleep(0.005)
        self.failed = writer.flush(30)
