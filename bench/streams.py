"""Scenario `streams`: the catalog's other streams through the same worker, next to Kafka's passthrough.

The transaction stream's figures are the throughput scenario's. For every other stream of the catalog
(log lines, sensor metrics): a version trained on its synthetic history with its default detectors (the
stream learns first: log templates, sensor names), its synthetic events preloaded into a topic of its own,
then passthrough and one exactly-once worker over that topic, `repetitions` times each. The figures are
the worker's events/s, its ratio to passthrough in the same run, and the transaction scorer's events/s
of this run beside them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.context import BenchContext
from bench.throughput import _ratio, _summary, run_peer, run_scorer
from bench.workload import Workload, preload
from shared.config import StreamSettings
from shared.pipeline import Stream
from shared.streams.catalog import CATALOG
from shared.training import TrainingData, TrainingResult, train_round

ENTITIES = 40
"""Hosts (logs) or assets (metrics) of the synthetic data: enough for every partition to get some."""


def train_stream(stream: Stream[Any, Any], rows: int) -> TrainingResult:
    """A version of the stream's default detectors, trained unlabelled on a nearly clean synthetic history."""
    history = stream.synthetic(events=rows, entities=ENTITIES, anomaly_rate=0.002, seed=31).payloads
    learned = stream.trained_on(history)
    offline = learned.offline(history)
    return train_round(TrainingData(offline.columns, None, "bench"), StreamSettings().completed(stream), learned, None)


def run_streams(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    others = [name for name in sorted(CATALOG) if name != "transactions"]
    task = ctx.progress.add_task("streams", total=len(others) * 2 * size.repetitions)
    streams: dict[str, Any] = {}
    for name in others:
        stream = CATALOG[name]
        ctx.progress.update(task, description=f"streams: training {name} on {size.stream_train_rows:,} events")
        trained = train_stream(stream, size.stream_train_rows)
        generated = stream.synthetic(events=size.stream_events, entities=ENTITIES, anomaly_rate=0.01, seed=32)
        workload = Workload(generated.payloads, generated.keys)
        topic = ctx.stack.topic(f"input-{name}")
        ctx.progress.update(task, description=f"streams: preloading {len(workload):,} {name} events")
        preload(ctx.stack.kafka, topic, workload)
        own = dataclasses.replace(ctx, trained=trained, workload=workload, input_topic=topic, stream=name, ceiling={})
        runs: dict[str, list[Any]] = {"passthrough": [], "scorer_eos": []}
        for rep in range(1, size.repetitions + 1):
            ctx.progress.update(task, description=f"streams: {name} passthrough {rep}/{size.repetitions}")
            runs["passthrough"].append(run_peer(own, "passthrough", f"st-{name}-passthrough-{rep}"))
            ctx.progress.advance(task)
            ctx.progress.update(task, description=f"streams: {name} scorer {rep}/{size.repetitions}")
            runs["scorer_eos"].append(run_scorer(own, f"st-{name}-eos-{rep}", "exactly_once"))
            ctx.progress.advance(task)
        summaries = {contender: _summary(figures) for contender, figures in runs.items()}
        streams[name] = {
            "events": len(workload),
            "training_events": size.stream_train_rows,
            "detectors": [entry.name for entry in trained.draft.detectors],
            **summaries,
            "scorer_over_passthrough": _ratio(
                summaries["scorer_eos"]["events_per_s"], summaries["passthrough"]["events_per_s"]
            ),
        }
    ctx.progress.remove_task(task)
    return {
        "parameters": {
            "events_per_stream": size.stream_events,
            "training_events": size.stream_train_rows,
            "repetitions": size.repetitions,
            "batch_size": size.batch_size,
            "batch_timeout_s": size.batch_timeout_s,
        },
        "transactions_scorer_eos_events_per_s": ctx.scorer_ceiling(),  # the throughput scenario's, or measured
        "streams": streams,
    }
