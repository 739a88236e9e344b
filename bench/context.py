"""What every scenario shares: the servers, the sizes, the trained default version, the preloaded input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from bench.environment import BenchStack
from bench.workload import Workload
from shared.config import WorkerSettings
from shared.training import TrainingResult

WORKER_DEFAULTS = WorkerSettings()
"""The worker's default settings: its batching is what every throughput contender uses, and the latency scenario's
first settings."""
_CAP, _TIMEOUT_S = WORKER_DEFAULTS.batch_size, WORKER_DEFAULTS.batch_timeout_s
_DEFAULT_BATCHING = f"≤ {_CAP} / {_TIMEOUT_S * 1000:.0f} ms"


@dataclass(frozen=True)
class LatencySetting:
    """One worker configuration the latency scenario measures."""

    label: str
    delivery: str  # exactly_once | at_least_once
    batch_size: int
    batch_timeout_s: float
    batch_min_size: int = 1  # the worker's default: score what has arrived
    overlap: bool = False  # worker.overlap_commit


@dataclass(frozen=True)
class BenchSize:
    """How big each scenario runs: the issue's sizes by default, small ones with --quick."""

    events: int = 1_000_000
    train_rows: int = 100_000
    repetitions: int = 3
    batch_size: int = _CAP
    batch_timeout_s: float = _TIMEOUT_S
    peer_seconds: float = 120.0  # every peer but the passthrough: time budget after its first output
    contender_timeout_s: float = 900.0
    latency_levels: tuple[float, ...] = (0.25, 0.50, 0.75)
    latency_level_s: float = 20.0
    warmup_s: float = 5.0  # uncounted load before the first level, so the first level starts warm
    # Batch size × how a batch fills: "≤ N" scores what has arrived (batch_min_size 1, the default; the timeout
    # only bounds the wait for a first record), "N full" waits for N records or the timeout (batch_min_size N).
    latency_settings: tuple[LatencySetting, ...] = (
        LatencySetting(f"at-least-once, {_DEFAULT_BATCHING}", "at_least_once", _CAP, _TIMEOUT_S),
        LatencySetting(f"exactly-once, {_DEFAULT_BATCHING}", "exactly_once", _CAP, _TIMEOUT_S),
        LatencySetting("at-least-once, ≤ 1000 / 50 ms", "at_least_once", 1000, 0.05),
        LatencySetting("exactly-once, ≤ 1000 / 50 ms", "exactly_once", 1000, 0.05),
        LatencySetting("exactly-once, 1000 full / 50 ms", "exactly_once", 1000, 0.05, 1000),
        LatencySetting("at-least-once, 1000 full / 10 ms", "at_least_once", 1000, 0.01, 1000),
        LatencySetting("at-least-once, ≤ 1000, min 200 / 10 ms", "at_least_once", 1000, 0.01, 200),
        LatencySetting("exactly-once, 5000 full / 200 ms", "exactly_once", 5000, 0.2, 5000),
        LatencySetting(
            f"at-least-once, {_DEFAULT_BATCHING}, overlap_commit", "at_least_once", _CAP, _TIMEOUT_S, overlap=True
        ),
        LatencySetting(
            f"exactly-once, {_DEFAULT_BATCHING}, overlap_commit", "exactly_once", _CAP, _TIMEOUT_S, overlap=True
        ),
    )
    reload_window_s: float = 5.0
    scaling_events: int = 500_000
    rebalance_window_s: float = 10.0
    session_timeout_ms: int = 6000  # the broker's minimum: how soon a killed worker's partitions move
    transaction_timeout_ms: int = 10_000  # how long a killed worker's open transaction blocks read_committed
    training_rows: tuple[int, ...] = (100_000, 1_000_000)
    memory_versions: int = 3
    memory_window_s: float = 10.0
    stream_events: int = 200_000  # per stream of the `streams` scenario
    stream_train_rows: int = 50_000
    deeplog_rows: int = 20_000  # log lines DeepLog trains on (the `deep` scenario)
    mscred_rows: int = 1_000  # sensor windows MS-CRED trains on: its defaults take ~0.5 s per window on 2 cores
    deep_score_rows: int = 10_000
    deep_batch_rows: int = 1000  # the deep table's "per 1,000-line worker batch", whatever the worker's cap
    deep_max_epochs: int | None = None  # None: each kind's default (early stopping may end sooner)

    @classmethod
    def quick(cls) -> BenchSize:
        return cls(
            events=20_000,
            train_rows=8_000,
            repetitions=1,
            peer_seconds=4.0,
            contender_timeout_s=60.0,
            latency_level_s=1.5,
            warmup_s=1.0,
            latency_settings=cls.latency_settings[:3],
            reload_window_s=2.5,
            scaling_events=20_000,
            rebalance_window_s=2.0,
            training_rows=(2_000, 5_000),
            memory_window_s=1.5,
            stream_events=4 * _CAP,  # several batches: one Kafka transaction's outputs appear at once and give no rate
            stream_train_rows=3_000,
            deeplog_rows=2_000,
            mscred_rows=50,  # 200 took 32 s to train, 50 take 20 s (mostly compiling)
            deep_score_rows=1_000,
            deep_max_epochs=2,
        )


@dataclass
class BenchContext:
    stack: BenchStack
    size: BenchSize
    out_dir: Path
    progress: Progress
    trained: TrainingResult
    workload: Workload
    input_topic: str  # preloaded with the whole workload, read by every throughput contender
    ceiling: dict[str, float] = field(default_factory=dict)  # scorer events/s by delivery, once measured
    measure_ceiling: Callable[[BenchContext], float] | None = None
    stream: str = "transactions"  # the stream the workload is, and the scorer serves

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "logs"

    def scorer_ceiling(self) -> float:
        """The exactly-once scorer's events/s: from the throughput scenario, or measured once here."""
        if "exactly_once" not in self.ceiling and self.measure_ceiling is not None:
            self.ceiling["exactly_once"] = self.measure_ceiling(self)
        return self.ceiling.get("exactly_once", 5_000.0)
