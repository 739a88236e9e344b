"""Scenario 6, memory: a worker's peak resident memory with the default version loaded, then after
each of several new versions is published and swapped in (under a light load, so it keeps scoring).
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import BenchContext
from bench.environment import PARTITIONS
from bench.probes import ProcessTreeSampler
from bench.scorer import ScorerDeployment, WorkerProcess
from bench.workload import PacedProducer

MIB = 2**20
LOAD = 0.25


def _wait_serving(worker: WorkerProcess, version: int, timeout_s: float = 30.0) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(e.get("version") == version for e in worker.log_events("serving model version")):
            return time.time()
        time.sleep(0.1)
    return None


def run_memory(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    task = ctx.progress.add_task("memory: default version, then new versions", total=None)
    deployment = ScorerDeployment(ctx.stack, "memory", ctx.stack.topic("memory.input"), ctx.log_dir)
    deployment.publish(ctx.trained)
    steps: list[dict[str, Any]] = []
    try:
        worker = deployment.start_worker()
        deployment.wait_assigned(PARTITIONS)
        rate = LOAD * ctx.scorer_ceiling()
        with PacedProducer(ctx.stack.kafka, deployment.input_topic, ctx.workload, rate=rate), \
                ProcessTreeSampler(worker.pid) as sampler:  # fmt: skip
            time.sleep(size.memory_window_s)
            steps.append({"versions_loaded": 1, "peak_rss_mib": round(sampler.reset_peak() / MIB, 1)})
            for loaded in range(2, size.memory_versions + 2):
                version = deployment.publish(ctx.trained)
                served_at = _wait_serving(worker, version)
                time.sleep(size.memory_window_s)
                steps.append(
                    {
                        "versions_loaded": loaded,
                        "version": version,
                        "swapped": served_at is not None,
                        "peak_rss_mib": round(sampler.reset_peak() / MIB, 1),
                    }
                )
    finally:
        deployment.stop_all()
        ctx.progress.remove_task(task)
    return {
        "parameters": {
            "load_events_per_s": round(rate, 1),
            "seconds_per_step": size.memory_window_s,
            "artifact_bytes": len(ctx.trained.bundle.to_bytes()),
            "detectors": [d.name for d in ctx.trained.draft.detectors],
        },
        "steps": steps,
        "peak_rss_mib": max(step["peak_rss_mib"] for step in steps) if steps else None,
    }
