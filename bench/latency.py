"""Scenario 2, end-to-end latency under load: from an event's produce timestamp to its output being
visible to a read_committed reader, with the producer paced at fractions of the scorer's ceiling.

One worker per delivery/batch setting; the load levels follow each other on the same worker, and
an event belongs to the level during which it was produced.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import BenchContext, LatencySetting
from bench.environment import PARTITIONS
from bench.probes import OutputTail, Visible, percentiles
from bench.scorer import ScorerDeployment
from bench.workload import PacedProducer


def latencies_s(
    heads: list[Visible], produced_at_ms: dict[tuple[int, int], int], since: float, until: float
) -> list[float]:
    """Latency of every output whose input was produced in [since, until) (epoch seconds)."""
    found = []
    for head in heads:
        stamp = produced_at_ms.get((head.partition, head.offset))
        if stamp is not None and since <= stamp / 1000.0 < until:
            found.append(head.at - stamp / 1000.0)
    return found


def worker_settings(setting: LatencySetting, ctx: BenchContext) -> dict[str, str]:
    size = ctx.size
    return {
        "FLEETWATCH_WORKER__DELIVERY": setting.delivery,
        "FLEETWATCH_WORKER__BATCH_SIZE": str(setting.batch_size),
        "FLEETWATCH_WORKER__BATCH_TIMEOUT_S": str(setting.batch_timeout_s),
        "FLEETWATCH_WORKER__BATCH_MIN_SIZE": str(setting.batch_min_size),
        "FLEETWATCH_WORKER__OVERLAP_COMMIT": str(setting.overlap).lower(),
        "FLEETWATCH_WORKER__CONSUMER_PROPERTIES": f'{{"session.timeout.ms": "{size.session_timeout_ms}"}}',
        "FLEETWATCH_WORKER__PRODUCER_PROPERTIES": f'{{"transaction.timeout.ms": "{size.transaction_timeout_ms}"}}',
    }


def _measure_setting(ctx: BenchContext, index: int, setting: LatencySetting, ceiling: float) -> dict[str, Any]:
    size = ctx.size
    name = f"lat-{index}"
    deployment = ScorerDeployment(
        ctx.stack, name, ctx.stack.topic(f"{name}.input"), ctx.log_dir, worker_settings(setting, ctx)
    )
    deployment.publish(ctx.trained)
    levels: list[dict[str, Any]] = []
    with OutputTail(ctx.stack.kafka, deployment.output_topics, decode=True) as tail:
        try:
            worker = deployment.start_worker()
            deployment.wait_assigned(PARTITIONS)
            first_rate = size.latency_levels[0] * ceiling
            with PacedProducer(ctx.stack.kafka, deployment.input_topic, ctx.workload, rate=first_rate) as paced:
                time.sleep(size.warmup_s)
                windows = []
                for level in size.latency_levels:
                    paced.set_rate(level * ceiling)
                    since = time.time()
                    time.sleep(size.latency_level_s)
                    windows.append((level, since, time.time()))
                paced.set_rate(0.0)
            tail.wait_for(paced.produced, timeout_s=60, alive=worker.alive)
        finally:
            deployment.stop_all()
    for level, since, until in windows:
        values = latencies_s(tail.heads, paced.produced_at_ms, since, until)
        produced = sum(1 for stamp in paced.produced_at_ms.values() if since <= stamp / 1000.0 < until)
        levels.append(
            {
                "load": level,
                "target_events_per_s": round(level * ceiling, 1),
                "produced_events_per_s": round(produced / (until - since), 1),
                **percentiles(values),
                "cdf_ms": _cdf_points(values),
            }
        )
    return {
        "setting": setting.label,
        "delivery": setting.delivery,
        "batch_size": setting.batch_size,
        "batch_timeout_s": setting.batch_timeout_s,
        "batch_min_size": setting.batch_min_size,
        "overlap_commit": setting.overlap,
        "produced": paced.produced,
        "visible": tail.count,
        **_missing_and_repeated(tail.heads, paced.produced_at_ms),
        "levels": levels,
    }


def _missing_and_repeated(heads: list[Visible], produced_at_ms: dict[tuple[int, int], int]) -> dict[str, int]:
    """Inputs the broker acknowledged with no output visible by the end of the wait (lost, or more than a minute
    late), and outputs beyond one per input."""
    seen = {(head.partition, head.offset) for head in heads}
    return {"missing": len(set(produced_at_ms) - seen), "repeated": len(heads) - len(seen)}


def _cdf_points(values_s: list[float], points: int = 50) -> list[float]:
    """The latency distribution at `points` evenly spaced quantiles, in ms (enough to draw its CDF)."""
    if not values_s:
        return []
    ordered = sorted(values_s)
    return [round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered) / points))], 2) for q in range(points)]


def run_latency(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    ceiling = ctx.scorer_ceiling()
    task = ctx.progress.add_task("latency", total=len(size.latency_settings))
    settings = []
    for index, setting in enumerate(size.latency_settings, start=1):
        ctx.progress.update(task, description=f"latency: {setting.label}")
        settings.append(_measure_setting(ctx, index, setting, ceiling))
        ctx.progress.advance(task)
    ctx.progress.remove_task(task)
    return {
        "parameters": {
            "scorer_ceiling_events_per_s": ceiling,
            "levels": list(size.latency_levels),
            "seconds_per_level": size.latency_level_s,
            "warm_up_s": size.warmup_s,
            "measured_from": "the input record's produce timestamp (CreateTime from its delivery report)",
            "measured_to": "arrival at a read_committed consumer of the output topics",
        },
        "settings": settings,
    }
