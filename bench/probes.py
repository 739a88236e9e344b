"""What the bench observes from outside: committed outputs as a reader sees them, and processes' memory and CPU.

`OutputTail` is a read_committed consumer in a thread, so "visible" means what any downstream reader
could see: for a transactional writer, only committed transactions. Arrival times are taken per
consumed batch (one clock read per batch, not per record).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import psutil
from confluent_kafka import TopicPartition

from shared.kafka_client import KafkaConnection, consumer, topic_partitions
from shared.output_records import Source


class OutputHead(msgspec.Struct):
    """The two fields of an alert or summary record the bench needs; the rest is skipped unparsed."""

    model_version: int
    source: Source


_HEAD_DECODER = msgspec.json.Decoder(OutputHead)


@dataclass(frozen=True)
class Visible:
    """One scored output as a read_committed reader saw it."""

    at: float  # time.time() when the batch holding it arrived
    partition: int  # input partition it was scored from
    offset: int  # input offset
    model_version: int


@dataclass
class OutputTail:
    """Counts (and optionally decodes) every committed record of a run's output topics, from offset 0."""

    kafka: KafkaConnection
    topics: list[str]
    decode: bool = False
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, records in that batch)
    heads: list[Visible] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-tail", daemon=True)

    def __enter__(self) -> OutputTail:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        reader = consumer(self.kafka, group_id=f"bench-tail-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 10})
        try:
            reader.assign([TopicPartition(t, p, 0) for t in self.topics for p in topic_partitions(self.kafka, t)])
            self._ready.set()
            while not self._stop.is_set():
                first = reader.poll(0.01)  # stamped on arrival: `consume` would hold it until its timeout
                if first is None:
                    continue
                now = time.time()
                batch = [first, *reader.consume(num_messages=10_000, timeout=0)]
                records = [m for m in batch if m.error() is None]
                if self.decode:
                    for message in records:
                        head = _HEAD_DECODER.decode(message.value() or b"")
                        self.heads.append(Visible(now, head.source.partition, head.source.offset, head.model_version))
                self.arrivals.append((now, len(records)))
                self.count += len(records)
        finally:
            self._ready.set()
            reader.close()

    def wait_for(self, expected: int, timeout_s: float, alive: Callable[[], bool] | None = None) -> bool:
        """Wait until `expected` records are visible; False on timeout or when the writer died."""
        deadline = time.monotonic() + timeout_s
        while self.count < expected:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                return False
            time.sleep(0.02)
        return True

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until no record arrived for `quiet_s` (the writers have caught up), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.arrivals[-1][0] if self.arrivals else 0.0
            if time.time() - last >= quiet_s:
                return
            time.sleep(0.05)

    def sustained_rate(self, since: float = 0.0, until: float = float("inf")) -> float | None:
        """Records/s between the first and last visible batch in [since, until], not counting the first
        batch (it arrived at the start of the interval, so it took no measured time)."""
        window = [(t, n) for t, n in self.arrivals if since <= t <= until]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return None
        return sum(n for _, n in window[1:]) / (window[-1][0] - window[0][0])

    def rate_series(self, bin_s: float, since: float, until: float) -> list[tuple[float, float]]:
        """(seconds since `since`, records/s) per bin: throughput over time."""
        edges = np.arange(since, until + bin_s, bin_s)
        times = np.array([t for t, _ in self.arrivals])
        counts = np.array([n for _, n in self.arrivals], dtype=float)
        sums, _ = np.histogram(times, bins=edges, weights=counts) if len(times) else (np.zeros(len(edges) - 1), None)
        return [(float(edge - since), float(total / bin_s)) for edge, total in zip(edges[:-1], sums, strict=True)]


@dataclass
class ProcessTreeSampler:
    """Samples a process and its children: peak resident memory (summed) and CPU seconds, in a thread."""

    pid: int
    interval_s: float = 0.1
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._cpu: dict[int, float] = {}

    def __enter__(self) -> ProcessTreeSampler:
        self._started = time.monotonic()
        self._sample()
        self._cpu_at_start = dict(self._cpu)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        self.wall_seconds = time.monotonic() - self._started
        self.cpu_seconds = sum(self._cpu.values()) - sum(self._cpu_at_start.values())

    def reset_peak(self) -> int:
        """Start a new peak from now; return the peak so far."""
        peak, self.peak_rss = self.peak_rss, 0
        return peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
            except psutil.Error:
                continue  # exited between listing and reading
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_cores(self) -> float:
        """Average cores busy over the sampled interval."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def percentiles(values_s: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in milliseconds, and how many values they summarise."""
    if not values_s:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    array = np.asarray(values_s) * 1000.0
    p50, p95, p99 = np.percentile(array, [50, 95, 99]).tolist()
    return {
        "count": len(array),
        "p50_ms": round(p50, 2),
        "p95_ms": round(p95, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(float(array.max()), 2),
    }
