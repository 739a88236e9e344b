"""Scenario 4, scaling: 1 and 2 worker processes on a 6-partition topic, and rebalances.

Throughput: the workers join an empty topic and settle their assignment first; then the input is
produced as fast as the client can, and the output rate is measured as in scenario 1 (with the
broker's CPU over the same interval, when the bench started the broker and can sample it).

Rebalances, under a paced load at half the one-worker ceiling: when a second worker joins, the time
from its subscription to the first output from a partition it took over; when it is killed
(SIGKILL), the time until the survivor is assigned its partitions (bounded by the session timeout)
and until their outputs are visible again (bounded also by the killed producer's transaction
timeout, since its open transaction holds back read_committed readers).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from bench.context import BenchContext, LatencySetting
from bench.environment import PARTITIONS
from bench.latency import worker_settings
from bench.probes import OutputTail, ProcessTreeSampler, Visible
from bench.scorer import ScorerDeployment, WorkerProcess
from bench.workload import PacedProducer, Workload, preload


def _setting(ctx: BenchContext) -> LatencySetting:
    return LatencySetting("exactly-once", "exactly_once", ctx.size.batch_size, ctx.size.batch_timeout_s)


def _throughput_with(ctx: BenchContext, workers: int, workload: Workload) -> dict[str, Any]:
    name = f"scale-{workers}"
    deployment = ScorerDeployment(ctx.stack, name, ctx.stack.topic(f"{name}.input"), ctx.log_dir,
                                  worker_settings(_setting(ctx), ctx))  # fmt: skip
    deployment.publish(ctx.trained)
    broker = ProcessTreeSampler(ctx.stack.broker_pid) if ctx.stack.broker_pid else None
    with OutputTail(ctx.stack.kafka, deployment.output_topics) as tail:
        try:
            for _ in range(workers):
                deployment.start_worker(wait_ready=False)
            for worker in deployment.workers:
                deployment.wait_ready(worker, 90)
            deployment.wait_assigned(PARTITIONS)
            with broker or contextlib.nullcontext():
                feeding = threading.Thread(target=preload, args=(ctx.stack.kafka, deployment.input_topic, workload))
                feeding.start()
                completed = tail.wait_for(len(workload), ctx.size.contender_timeout_s,
                                          alive=lambda: all(w.alive() for w in deployment.workers))  # fmt: skip
                feeding.join()
        finally:
            deployment.stop_all()
    return {
        "workers": workers,
        "events_per_s": round(rate, 1) if (rate := tail.sustained_rate()) else None,
        "completed": completed,
        "broker_cpu_cores": round(broker.cpu_cores, 2) if broker else None,
    }


def _first_output_after(heads: list[Visible], partitions: set[int], after: float) -> dict[int, float]:
    first: dict[int, float] = {}
    for head in heads:
        if head.partition in partitions and head.at >= after and head.partition not in first:
            first[head.partition] = head.at
    return first


def _assigned_at(worker: WorkerProcess, partitions: set[int], after: float) -> float | None:
    """When `worker` logged an assignment, after `after`, that includes any of `partitions`."""
    for event in worker.log_events("partitions assigned"):
        numbers = {int(p.rsplit("[", 1)[1].rstrip("]")) for p in event.get("partitions", [])}
        if event["at"] >= after and numbers & partitions:
            return float(event["at"])
    return None


def _rebalances(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    deployment = ScorerDeployment(ctx.stack, "rebalance", ctx.stack.topic("rebalance.input"), ctx.log_dir,
                                  worker_settings(_setting(ctx), ctx))  # fmt: skip
    deployment.publish(ctx.trained)
    rate = 0.5 * ctx.scorer_ceiling()
    with OutputTail(ctx.stack.kafka, deployment.output_topics, decode=True) as tail:
        try:
            first = deployment.start_worker()
            deployment.wait_assigned(PARTITIONS)
            with PacedProducer(ctx.stack.kafka, deployment.input_topic, ctx.workload, rate=rate):
                time.sleep(size.rebalance_window_s)
                second = deployment.start_worker()
                moved_at = deployment.wait_assigned(PARTITIONS)
                subscribed = second.log_events("consuming")
                joined_at = subscribed[0]["at"] if subscribed else second.started_at
                time.sleep(size.rebalance_window_s)
                moved = deployment.assignment().get(second.pid, set())
                killed_at = time.time()
                second.kill()
                deadline = time.monotonic() + size.session_timeout_ms / 1000 + size.transaction_timeout_ms / 1000 + 30
                while time.monotonic() < deadline and len(_first_output_after(tail.heads, moved, killed_at)) < len(
                    moved
                ):
                    time.sleep(0.2)
        finally:
            deployment.stop_all()
    join_first = _first_output_after(tail.heads, moved, joined_at)
    recovered = _first_output_after(tail.heads, moved, killed_at)
    reassigned = _assigned_at(first, moved, killed_at)
    return {
        "load_events_per_s": round(rate, 1),
        "session_timeout_ms": size.session_timeout_ms,
        "transaction_timeout_ms": size.transaction_timeout_ms,
        "join": {
            "moved_partitions": sorted(moved),
            "assignment_settled_s": round(moved_at - joined_at, 3),
            "first_output_from_moved_s": round(max(join_first.values()) - joined_at, 3)
            if len(join_first) == len(moved) and moved
            else None,
        },
        "kill": {
            "reassigned_s": round(reassigned - killed_at, 3) if reassigned else None,
            "outputs_visible_again_s": round(max(recovered.values()) - killed_at, 3)
            if len(recovered) == len(moved) and moved
            else None,
        },
    }


def run_scaling(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    workload = ctx.workload if size.scaling_events >= len(ctx.workload) else Workload(
        ctx.workload.payloads[: size.scaling_events], ctx.workload.keys[: size.scaling_events]
    )  # fmt: skip
    task = ctx.progress.add_task("scaling", total=3)
    runs = []
    for workers in (1, 2):
        ctx.progress.update(task, description=f"scaling: {workers} worker(s)")
        runs.append(_throughput_with(ctx, workers, workload))
        ctx.progress.advance(task)
    ctx.progress.update(task, description="scaling: a worker joins, then is killed")
    rebalances = _rebalances(ctx)
    ctx.progress.remove_task(task)
    one, two = (run["events_per_s"] for run in runs)
    return {
        "parameters": {"events": len(workload), "partitions": PARTITIONS, "delivery": "exactly_once"},
        "throughput": runs,
        "two_over_one": round(two / one, 3) if one and two else None,
        "rebalance": rebalances,
    }
