"""Scenario 3, hot reload cost at 50 % load: publish a new version while the worker scores.

Measured: from the publish to the first output scored by the new version, per input partition (the
slowest partition is the figure), and latency p99 and throughput in the window after the publish
against the same-length window before it.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import BenchContext, LatencySetting
from bench.environment import PARTITIONS
from bench.latency import latencies_s, worker_settings
from bench.probes import OutputTail, percentiles
from bench.scorer import ScorerDeployment
from bench.workload import PacedProducer

LOAD = 0.5


def run_reload(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    ceiling = ctx.scorer_ceiling()
    window = size.reload_window_s
    task = ctx.progress.add_task("reload: steady load, then a new version", total=None)
    setting = LatencySetting("exactly-once", "exactly_once", size.batch_size, size.batch_timeout_s)
    deployment = ScorerDeployment(ctx.stack, "reload", ctx.stack.topic("reload.input"), ctx.log_dir,
                                  worker_settings(setting, ctx))  # fmt: skip
    first_version = deployment.publish(ctx.trained)
    with OutputTail(ctx.stack.kafka, deployment.output_topics, decode=True) as tail:
        try:
            worker = deployment.start_worker()
            deployment.wait_assigned(PARTITIONS)
            with PacedProducer(ctx.stack.kafka, deployment.input_topic, ctx.workload, rate=LOAD * ceiling) as paced:
                time.sleep(window + 1.0)  # one extra second so the "before" window is steady
                published_at = time.time()
                new_version = deployment.publish(ctx.trained)
                time.sleep(window)
                paced.set_rate(0.0)
            tail.wait_for(paced.produced, timeout_s=60, alive=worker.alive)
        finally:
            deployment.stop_all()
            ctx.progress.remove_task(task)

    first_new: dict[int, float] = {}
    for head in tail.heads:
        if head.model_version == new_version and head.partition not in first_new:
            first_new[head.partition] = head.at - published_at
    before = (published_at - window, published_at)
    after = (published_at, published_at + window)

    def window_figures(since: float, until: float) -> dict[str, Any]:
        visible = sum(n for t, n in tail.arrivals if since <= t < until)
        by_visibility = [h for h in tail.heads if since <= h.at < until]
        return {
            "events_per_s": round(visible / (until - since), 1),
            **percentiles(latencies_s(by_visibility, paced.produced_at_ms, 0.0, float("inf"))),
        }

    start = published_at - window - 1.0
    return {
        "parameters": {
            "load": LOAD,
            "target_events_per_s": round(LOAD * ceiling, 1),
            "window_s": window,
            "versions": [first_version, new_version],
            "delivery": "exactly_once",
        },
        "publish_to_first_new_output_s": {
            "per_partition": {str(p): round(s, 3) for p, s in sorted(first_new.items())},
            "every_partition": round(max(first_new.values()), 3) if len(first_new) == PARTITIONS else None,
        },
        "before": window_figures(*before),
        "around_swap": window_figures(*after),
        "throughput_series": [
            (round(t - (published_at - start), 2), round(r, 1))
            for t, r in tail.rate_series(0.5, start, published_at + window)
        ],
    }
