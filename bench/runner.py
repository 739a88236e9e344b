"""`fleetwatch bench`: set up once (servers, default version, preloaded input), run the chosen scenarios,
write `results.json` and `report.md` (with plots) into the output folder.

>>> sorted(SCENARIOS)
['deep', 'latency', 'memory', 'reload', 'scaling', 'streams', 'throughput', 'training']
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from bench.context import BenchContext, BenchSize
from bench.deep_cost import run_deep_cost
from bench.environment import bench_stack, machine_description, software_versions
from bench.latency import run_latency
from bench.logs_quality import logs_benchmark as logs_benchmark  # `fleetwatch bench logs`
from bench.memory import run_memory
from bench.nab_run import nab_command
from bench.quality import run_quality
from bench.reload import run_reload
from bench.report import print_tables, write_report
from bench.scaling import run_scaling
from bench.sensor_windows import RESULTS_DIR
from bench.skab_run import skab_command
from bench.streams import run_streams
from bench.throughput import measure_scorer_ceiling, run_throughput
from bench.training_cost import run_training_cost
from bench.workload import preload, synthetic_workload
from shared.config import StreamSettings
from shared.errors import FleetwatchError
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import TrainingData, TrainingResult, train_round

SCENARIOS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "throughput": run_throughput,
    "latency": run_latency,
    "reload": run_reload,
    "scaling": run_scaling,
    "training": run_training_cost,
    "memory": run_memory,
    "streams": run_streams,
    "deep": run_deep_cost,
}
RESULTS_SCHEMA_VERSION = 1
QUICK_NOTE = (
    "Quick mode: small inputs, one repetition, short windows. It proves every scenario runs and counts its "
    "outputs; its speeds are dominated by start-up and noise and are not the system's figures."
)


def train_default_version(rows: int, seed: int = 11) -> TrainingResult:
    """Every detector of the default stream configuration, trained on a labelled synthetic history."""
    data = generate_transactions(GeneratorSpec(users=max(rows // 10, 10), events=rows, seed=seed))
    return train_round(
        TrainingData(data.transaction_columns(), data.is_anomaly, "bench"),
        StreamSettings().completed(TRANSACTIONS),
        TRANSACTIONS,
        None,
    )


def quality_table(
    files: list[Path], seeds: int, published: Path | None, out_dir: Path | None, on_dataset: Callable[[str], None]
) -> str:
    """`fleetwatch bench quality`: `bench.quality` with the transactions stream's default detectors as the fleet
    (its voting members: the specialists read named transaction features, which a benchmark file does not
    have); with `out_dir`, the figures also go to `adbench_quality.json` there."""
    fleet = [entry for entry in TRANSACTIONS.default_detectors if not entry.get("specialist")]
    json_out = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        json_out = out_dir / "adbench_quality.json"
    return run_quality(files, seeds=seeds, fleet=fleet, published=published, json_out=json_out, on_dataset=on_dataset)


def public_sensor_benchmark(name: str, data_dir: Path, out_dir: Path | None, on_file: Callable[[str], None]) -> str:
    """`fleetwatch bench nab|skab`: the benchmark on a clone of its repository; JSON into `out_dir` (default
    bench/results), the tables returned for printing."""
    commands = {"nab": nab_command, "skab": skab_command}
    return commands[name](data_dir, out_dir or RESULTS_DIR, on_file)


def run_bench(scenarios: list[str], quick: bool, out_dir: Path, console: Console) -> dict[str, Any]:
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        raise FleetwatchError(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    chosen = scenarios or list(SCENARIOS)
    size = BenchSize.quick() if quick else BenchSize()
    out_dir = out_dir.resolve()  # the servers it starts run in folders of their own: a relative path would miss
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "machine": machine_description(),
        **({"note": QUICK_NOTE} if quick else {}),
        "scenarios": {},
    }
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip
    with bench_stack(out_dir) as stack, progress:
        results["versions"] = software_versions(stack)
        results["servers"] = {"own": stack.own_servers, "kafka_bootstrap": stack.kafka.bootstrap}
        setup = progress.add_task(f"training the default version on {size.train_rows:,} rows", total=None)
        trained = train_default_version(size.train_rows)
        progress.update(setup, description=f"generating {size.events:,} transactions")
        workload = synthetic_workload(size.events)
        input_topic = stack.topic("input")
        progress.update(setup, description=f"preloading {input_topic}", total=len(workload), completed=0)
        preload(stack.kafka, input_topic, workload, on_progress=lambda done: progress.advance(setup, done))
        progress.remove_task(setup)
        ctx = BenchContext(stack, size, out_dir, progress, trained, workload, input_topic, {}, measure_scorer_ceiling)
        for name in chosen:
            scenario_started = time.monotonic()
            results["scenarios"][name] = SCENARIOS[name](ctx)
            results["scenarios"][name]["seconds"] = round(time.monotonic() - scenario_started, 1)
    results["seconds"] = round(time.monotonic() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    write_report(results, out_dir)
    print_tables(results, console)
    return results
