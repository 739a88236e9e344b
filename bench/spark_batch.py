"""Batch scoring at seed 001's sizes: the single-process batch mode (`fleetwatch score`) against the Spark path
(`fleetwatch spark score`, local mode), as real commands, each bounded in memory and time.

    python -m bench.spark_batch [--sizes 1m 10m] [--out .fleetwatch/bench-spark] [--memory-bound-gib 16]

For each size: the data (`fleetwatch generate --out tx-<size>.parquet`, kept for the next run), then both
commands with the same registry version, sampled every 0.2 s (process tree: the Spark command's JVM and its
Python workers included) for wall time, peak resident memory and CPU seconds. A command past the memory bound
or the time bound is killed and reported as such. The Spark run writes its event log, from which the per-task
times give the rate of one partition and the core-seconds per million events, the basis of the projection to
100M events on N executors. The version is trained first, through Spark, on a sample of the first size
(`fleetwatch spark train --sample-rate`), and that round is measured too. Results go to `results.json` in
the output folder. Not a test: nothing is asserted; minutes to an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from shared.local_infra.processes import free_port
from shared.local_infra.redis_server import RedisServer

GIB = 2**30
GENERATE_MEMORY_BOUND = 20 * GIB
SIZES = {"1m": (1_000_000, 100_000), "10m": (10_000_000, 1_000_000)}
"""Events and users per size, as seed 001 states them (10M transactions of 1M users)."""


@dataclass
class CommandRun:
    command: str
    outcome: str  # ok, exit <code>, out of memory (> bound), out of time (> bound)
    wall_s: float
    peak_rss_gib: float
    cpu_s: float
    last_output: str

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "exit 4")  # 4: a batch alert, a result like any other


def run_bounded(command: list[str], env: dict[str, str], memory_bound: int, time_bound_s: float) -> CommandRun:
    """Run `command`, sampling its process tree's resident memory; kill the tree past either bound.

    CPU time comes from the kernel when the command is reaped (`wait4`): its own and every descendant's that
    was waited for (the JVM, PySpark's daemon and workers), counted once each, whatever the sampling missed.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        root = psutil.Process(process.pid)
        peak, outcome = 0, None
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            rss = 0
            for member in tree:
                try:
                    rss += member.memory_info().rss
                except psutil.Error:
                    continue  # exited between listing and reading
            peak = max(peak, rss)
            if outcome is None and rss > memory_bound:
                outcome = f"out of memory (> {memory_bound / GIB:.0f} GiB)"
            elif outcome is None and time.monotonic() - started > time_bound_s:
                outcome = f"out of time (> {time_bound_s / 60:.0f} min)"
            if outcome is not None:
                for member in reversed(tree):
                    try:
                        member.kill()
                    except psutil.Error:
                        continue
            time.sleep(0.2)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        output.seek(0)
        last_lines = output.read().strip().splitlines()[-4:]
    return CommandRun(
        command=" ".join(command[2:] if command[1] == "-m" else command),
        outcome=outcome or ("ok" if code == 0 else f"exit {code}"),
        wall_s=round(time.monotonic() - started, 1),
        peak_rss_gib=round(peak / GIB, 2),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
        last_output="\n".join(last_lines),
    )


def fleetwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "workers.cli", *args]


def spark_task_rates(event_log_dir: Path) -> dict[str, Any]:
    """From a Spark event log: the scoring tasks (those that wrote scored rows) and every task's run time."""
    # Spark 4 writes one folder per application, its events in `events_<n>_<app>` files (uncompressed here).
    application = max(event_log_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    lines = [line for part in sorted(application.glob("events_*")) for line in part.read_text().splitlines()]
    scoring: list[tuple[int, float]] = []  # (rows written, executor run seconds)
    total_run_s = 0.0
    for line in lines:
        event = json.loads(line)
        if event.get("Event") != "SparkListenerTaskEnd":
            continue
        metrics = event.get("Task Metrics") or {}
        run_s = metrics.get("Executor Run Time", 0) / 1000
        total_run_s += run_s
        written = (metrics.get("Output Metrics") or {}).get("Records Written", 0)
        if written:
            scoring.append((written, run_s))
    rows = sum(r for r, _ in scoring)
    scoring_s = sum(s for _, s in scoring)
    return {
        "scoring_tasks": len(scoring),
        "rows_per_partition": round(rows / max(len(scoring), 1)),
        "seconds_per_partition": round(scoring_s / max(len(scoring), 1), 2),
        "partition_rate_rows_per_core_s": round(rows / scoring_s) if scoring_s else None,
        "all_tasks_core_s": round(total_run_s, 1),
        "core_s_per_million_rows": round(total_run_s / rows * 1e6, 1) if rows else None,
    }


def projection_100m(
    results: dict[str, Any], executors: Sequence[int] = (1, 4, 16, 64), cores: int = 4
) -> dict[str, Any]:
    """100M events on N executors of `cores` cores, from the largest Spark run.

    The work per million events is measured two ways: the CPU seconds of the whole Spark command (driver, JVM,
    Python workers), a lower bound, and the tasks' run time (wall time of every task on its core), an upper
    bound that also counts waiting, and on a shared machine the other processes' share of the cores. Times 100,
    spread evenly over the cores (1,000 partitions of 100,000 events, far more than cores). Start-up (a JVM and
    its workers, seconds) and the network are not counted.
    """
    size, entry = [(size, entry) for size, entry in results["sizes"].items() if entry.get("spark_tasks")][-1]
    bounds = {
        "cpu": entry["spark"]["cpu_s"] / entry["events"] * 1e6,
        "task_time": entry["spark_tasks"]["core_s_per_million_rows"],
    }
    price = results["price_per_core_hour_usd"]
    projected: dict[str, Any] = {"from_size": size}
    for name, core_s_per_million in bounds.items():
        core_hours = core_s_per_million * 100 / 3600
        projected[name] = {
            "core_s_per_million_events": round(core_s_per_million, 1),
            "core_s_per_partition_of_100k": round(core_s_per_million / 10, 1),
            "core_hours": round(core_hours, 2),
            "cost_usd": round(core_hours * price, 2),
            "wall_min_by_executors": {n: round(core_hours * 60 / (n * cores), 1) for n in executors},
        }
    return projected


def _identical(batch_dir: Path, spark_dir: Path) -> dict[str, Any]:
    """Alerts and the top anomalies of both runs (the scores are compared row by row in the tests)."""
    batch_top = pq.read_table(batch_dir / "top.parquet").column("event_id").to_pylist()
    spark_top = pq.read_table(spark_dir / "top.parquet").column("event_id").to_pylist()
    return {
        "same_report": (batch_dir / "report.md").read_text() == (spark_dir / "report.md").read_text(),
        "same_top": batch_top == spark_top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--out", type=Path, default=Path(".fleetwatch/bench-spark"))
    parser.add_argument("--memory-bound-gib", type=float, default=16.0)
    parser.add_argument("--time-bound-min", type=float, default=20.0)
    parser.add_argument("--train-sample-rate", type=float, default=0.1)
    parser.add_argument("--price-per-core-hour", type=float, default=0.05, help="assumed on-demand USD per vCPU-hour")
    parser.add_argument("--skip-single", action="store_true", help="only the Spark path")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    memory_bound, time_bound_s = int(args.memory_bound_gib * GIB), args.time_bound_min * 60
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "bounds": {"memory_gib": args.memory_bound_gib, "time_min": args.time_bound_min},
        "price_per_core_hour_usd": args.price_per_core_hour,
        "sizes": {},
    }  # fmt: skip
    redis_server = RedisServer(out / "redis", free_port(), persistent=False)
    redis_server.start()
    env = {
        **os.environ,
        "FLEETWATCH_REDIS_URL": redis_server.url,
        "FLEETWATCH_REDIS_PREFIX": f"bench-spark-{secrets.token_hex(4)}:",
        "FLEETWATCH_REGISTRY_KEY": secrets.token_hex(16),
        "FLEETWATCH_ARTIFACT_STORE": "file",
        "FLEETWATCH_ARTIFACT_DIR": str(out / "artifacts"),
    }
    try:
        for index, size in enumerate(args.sizes):
            events, users = SIZES[size]
            data = out / f"tx-{size}.parquet"
            entry: dict[str, Any] = {"events": events, "users": users}
            if not data.exists():
                made = run_bounded(
                    fleetwatch("generate", "--out", str(data), "--users", str(users), "--events", str(events)),
                    env, GENERATE_MEMORY_BOUND, 3600,
                )  # fmt: skip
                entry["generate"] = asdict(made)
            if index == 0:
                labels = data.with_name(f"{data.stem}.labels{data.suffix}")
                entry["spark_train"] = asdict(
                    run_bounded(
                        fleetwatch("spark", "train", str(data), "--labels", str(labels),
                                   "--sample-rate", str(args.train_sample_rate)),
                        env, memory_bound, time_bound_s,
                    )
                )  # fmt: skip
            event_log = out / f"spark-events-{size}"
            event_log.mkdir(exist_ok=True)
            logs = ["--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
                    "--conf", f"spark.eventLog.dir={event_log.as_uri()}"]  # fmt: skip
            spark_run = run_bounded(
                fleetwatch("spark", "score", str(data), "--out", str(out / f"spark-{size}"), "--version", "1", *logs),
                env, memory_bound, time_bound_s,
            )  # fmt: skip
            entry["spark"] = asdict(spark_run)
            if spark_run.ok:
                entry["spark_tasks"] = spark_task_rates(event_log)
            if not args.skip_single:
                single = run_bounded(
                    fleetwatch("score", str(data), "--out", str(out / f"single-{size}"), "--version", "1"),
                    env, memory_bound, time_bound_s,
                )  # fmt: skip
                entry["single"] = asdict(single)
                if single.ok and spark_run.ok:
                    entry["identical"] = _identical(out / f"single-{size}", out / f"spark-{size}")
            results["sizes"][size] = entry
            (out / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({size: entry}, indent=2), flush=True)
    finally:
        redis_server.stop()
    if any(entry.get("spark_tasks") for entry in results["sizes"].values()):
        results["projection_100m"] = projection_100m(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get("projection_100m"), indent=2))


if __name__ == "__main__":
    main()
