"""Scenario 1, throughput ceiling: every contender consumes the same preloaded input topic.

A contender's figure is its sustained rate as a read_committed reader sees it: records visible
between its first and its last committed output batch, divided by that time (see
`OutputTail.sustained_rate`). The same rule for every contender; each has its own output topics and
consumer group, so they never see each other's work. A contender that cannot run is reported with
the reason, never with a made-up number.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import BenchContext
from bench.peers import PeerConfig, start_peer
from bench.probes import OutputTail
from bench.profiling import Profiler, py_spy, summarize
from bench.scorer import REGISTRY_KEY, ScorerDeployment, registry_for
from shared.kafka_client import topic_partitions

CONTENDERS = ("passthrough", "scorer_eos", "scorer_at_least_once", "scorer_eos_overlap", "per_record", "quixstreams",
              "faust", "bytewax")  # fmt: skip
SCORERS = {  # contender: (delivery, worker.overlap_commit)
    "scorer_eos": ("exactly_once", False),
    "scorer_at_least_once": ("at_least_once", False),
    "scorer_eos_overlap": ("exactly_once", True),
}
PEER_MODULES = {
    "passthrough": "passthrough_app",
    "per_record": "per_record_app",
    "quixstreams": "quix_app",
    "faust": "faust_app",
    "bytewax": "bytewax_app",
}
# ...over_bytewax: the scorer at least as fast as the best batching peer a Python user could assemble; Bytewax
# is at-least-once, so the at-least-once scorer is the like-for-like figure.
TARGETS = {"scorer_over_passthrough": 0.5, "scorer_at_least_once_over_passthrough": 0.5,
           "scorer_eos_overlap_over_passthrough": 0.5,
           "scorer_over_per_record": 100.0, "scorer_over_quixstreams": 3.0,
           "scorer_over_faust": 3.0, "scorer_over_bytewax": 1.0,
           "scorer_at_least_once_over_bytewax": 1.0}  # fmt: skip


@dataclass(frozen=True)
class RunFigure:
    events_per_s: float | None
    visible: int  # outputs a read_committed reader saw
    completed: bool  # all input was scored (per_record stops at its time budget by design)
    failure: str | None = None
    stage_seconds: dict[str, float] | None = None


def run_scorer(
    ctx: BenchContext, name: str, delivery: str, overlap_commit: bool = False, profile_to: Path | None = None
) -> RunFigure:
    """One `fleetwatch worker` over the preloaded input, from an empty registry namespace and group;
    with `profile_to`, py-spy samples the worker for the whole run."""
    size = ctx.size
    deployment = ScorerDeployment(
        ctx.stack,
        name,
        ctx.input_topic,
        ctx.log_dir,
        settings={
            "FLEETWATCH_WORKER__DELIVERY": delivery,
            "FLEETWATCH_WORKER__BATCH_SIZE": str(size.batch_size),
            "FLEETWATCH_WORKER__BATCH_TIMEOUT_S": str(size.batch_timeout_s),
            "FLEETWATCH_WORKER__OVERLAP_COMMIT": str(overlap_commit).lower(),
        },
        stream=ctx.stream,
    )
    deployment.publish(ctx.trained)
    with OutputTail(ctx.stack.kafka, deployment.output_topics) as tail:
        try:
            worker = deployment.start_worker()
            with Profiler(worker.pid, profile_to, size.contender_timeout_s) if profile_to else nullcontext():
                completed = tail.wait_for(len(ctx.workload), size.contender_timeout_s, alive=worker.alive)
            stages = worker.stage_seconds() if worker.alive() else None
            failure = None if worker.alive() else f"worker exited ({worker.process.returncode}); see {worker.log_file}"
        finally:
            deployment.stop_all()
    return RunFigure(tail.sustained_rate(), tail.count, completed, failure, stages)


def profile_scorer(ctx: BenchContext) -> dict[str, Any]:
    """A separate exactly-once run under py-spy (the measured runs stay unprofiled), summarized."""
    if py_spy() is None:
        return {"unavailable": "py-spy is not installed"}
    raw = ctx.out_dir / "scorer-profile.txt"
    figure = run_scorer(ctx, "tp-profiled", "exactly_once", profile_to=raw)
    if not raw.exists():
        return {"unavailable": f"py-spy wrote no profile ({figure.failure or 'no reason given'})"}
    return {"raw_file": raw.name, "events_per_s_while_profiled": figure.events_per_s, **summarize(raw)}


def measure_scorer_ceiling(ctx: BenchContext) -> float:
    figure = run_scorer(ctx, f"ceiling-{int(time.time())}", "exactly_once")
    return figure.events_per_s or 1_000.0


def run_peer(ctx: BenchContext, contender: str, name: str) -> RunFigure:
    size = ctx.size
    topics = {role: ctx.stack.topic(f"{name}.{role}") for role in ("alerts", "summary", "deadletter")}
    prefix = ctx.stack.prefix(name)
    if contender != "passthrough":
        registry_for(ctx.stack, prefix).publish(ctx.trained.bundle, ctx.trained.draft, deploy=True)
    # Peers far slower than the scorer would take hours over the whole input: they get a time budget
    # from their first output on (passthrough, the fast one, consumes everything).
    time_budget = size.contender_timeout_s if contender == "passthrough" else size.peer_seconds
    state_dir = tempfile.mkdtemp(prefix=f"{contender}-", dir=ctx.out_dir)
    config = PeerConfig(
        bootstrap=ctx.stack.kafka.bootstrap,
        input_topic=ctx.input_topic,
        alerts_topic=topics["alerts"],
        summary_topic=topics["summary"],
        deadletter_topic=topics["deadletter"],
        group_id=f"bench-{ctx.stack.run_id}-{name}",
        batch_size=size.batch_size,
        batch_timeout_s=size.batch_timeout_s,
        exactly_once=contender not in ("per_record", "bytewax"),  # Bytewax has no Kafka transactions
        redis_url=ctx.stack.redis_url,
        redis_prefix=prefix,
        registry_key=REGISTRY_KEY,
        state_dir=state_dir,
        max_seconds=size.contender_timeout_s + time_budget + 30.0,  # the peer's own bound, past the bench's wait
    )
    with OutputTail(ctx.stack.kafka, list(topics.values())) as tail:
        peer = start_peer(PEER_MODULES[contender], config, ctx.log_dir / f"{name}.log")
        try:
            tail.wait_for(1, size.contender_timeout_s, alive=peer.alive)
            completed = tail.wait_for(len(ctx.workload), time_budget, alive=peer.alive)
            failure = None if peer.alive() else f"exited with {peer.process.returncode}: {peer.log_tail()}"
        finally:
            peer.stop()
            shutil.rmtree(state_dir, ignore_errors=True)  # the peer's state store: not a result
    if tail.count == 0 and failure is None:
        failure = f"no output within {size.contender_timeout_s:.0f}s: {peer.log_tail()}"
    return RunFigure(tail.sustained_rate(), tail.count, completed, failure)


def _summary(figures: list[RunFigure]) -> dict[str, Any]:
    rates = [f.events_per_s for f in figures if f.events_per_s is not None and f.failure is None]
    return {
        "events_per_s": round(statistics.median(rates), 1) if rates else None,
        "repetitions": [round(r, 1) for r in rates],
        "spread": {"min": round(min(rates), 1), "max": round(max(rates), 1)} if rates else None,
        "visible_outputs": [f.visible for f in figures],
        "completed": [f.completed for f in figures],
        "failures": [f.failure for f in figures if f.failure],
    }


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def run_throughput(ctx: BenchContext, contenders: tuple[str, ...] = CONTENDERS) -> dict[str, Any]:
    size = ctx.size
    runners: dict[str, Callable[[str], RunFigure]] = {
        **{c: (lambda name, how=how: run_scorer(ctx, name, *how)) for c, how in SCORERS.items()},  # type: ignore[misc]
        **{peer: (lambda name, peer=peer: run_peer(ctx, peer, name)) for peer in PEER_MODULES},  # type: ignore[misc]
    }
    # Peers slower than the scorer by design run once: their time budget bounds them, not the data.
    repetitions = {c: size.repetitions if c == "passthrough" or c in SCORERS else 1
                   for c in contenders}  # fmt: skip
    task = ctx.progress.add_task("throughput: warm-up (passthrough, uncounted)", total=sum(repetitions.values()))
    # The broker's JIT and page cache warm up on the first pass over the input; nobody should pay for it.
    warm_up = run_peer(ctx, "passthrough", "tp-warm-up")
    runs: dict[str, dict[str, Any]] = {}
    stages: dict[str, float] = {}
    for contender in contenders:
        figures = []
        for rep in range(1, repetitions[contender] + 1):
            ctx.progress.update(task, description=f"throughput: {contender} {rep}/{repetitions[contender]}")
            figure = runners[contender](f"tp-{contender}-{rep}".replace("_", "-"))
            figures.append(figure)
            if contender == "scorer_eos" and figure.stage_seconds:
                for stage, seconds in figure.stage_seconds.items():
                    stages[stage] = stages.get(stage, 0.0) + seconds
            ctx.progress.advance(task)
        runs[contender] = _summary(figures)

    rates = {c: runs[c]["events_per_s"] if c in runs else None for c in CONTENDERS}
    if rates["scorer_eos"]:
        ctx.ceiling["exactly_once"] = rates["scorer_eos"]
    scorer = rates["scorer_eos"]
    ratios = {
        "scorer_over_passthrough": _ratio(scorer, rates["passthrough"]),
        "scorer_at_least_once_over_passthrough": _ratio(rates["scorer_at_least_once"], rates["passthrough"]),
        "scorer_eos_overlap_over_passthrough": _ratio(rates["scorer_eos_overlap"], rates["passthrough"]),
        "scorer_over_per_record": _ratio(scorer, rates["per_record"]),
        "scorer_over_quixstreams": _ratio(scorer, rates["quixstreams"]),
        "scorer_over_faust": _ratio(scorer, rates["faust"]),
        "scorer_over_bytewax": _ratio(scorer, rates["bytewax"]),
        "scorer_at_least_once_over_bytewax": _ratio(rates["scorer_at_least_once"], rates["bytewax"]),
    }
    total_stage = sum(stages.values())
    missed = (
        ratios["scorer_over_passthrough"] is not None
        and ratios["scorer_over_passthrough"] < TARGETS["scorer_over_passthrough"]
    )
    profile = None
    if missed:
        ctx.progress.update(task, description="throughput: profiling the scorer (py-spy)")
        profile = profile_scorer(ctx)
    ctx.progress.remove_task(task)
    return {
        "parameters": {
            "events": len(ctx.workload),
            "input_partitions": len(topic_partitions(ctx.stack.kafka, ctx.input_topic)),
            "batch_size": size.batch_size,
            "batch_timeout_s": size.batch_timeout_s,
            "warm_up": f"one uncounted passthrough pass first ({_figure(warm_up.events_per_s)} events/s)",
            "peer_time_budget_s": size.peer_seconds,
            "peer_time_budget_applies_to": [peer for peer in PEER_MODULES if peer != "passthrough"],
            "detectors": [d.name for d in ctx.trained.draft.detectors],
            "metric": "records visible to a read_committed reader between the first and last committed output "
            "batch, per second",
        },
        "events_per_s": rates,
        "ratios": ratios,
        "targets": {
            name: {"target": target, "met": None if (ratio := ratios[name]) is None else ratio >= target}
            for name, target in TARGETS.items()
        },
        "runs": runs,
        "unavailable": {c: "; ".join(runs[c]["failures"]) or "no figure" for c in runs if rates[c] is None},
        "scorer_stage_seconds": {stage: round(s, 3) for stage, s in sorted(stages.items())},
        "scorer_stage_share": {stage: round(s / total_stage, 3) for stage, s in sorted(stages.items())}
        if total_stage
        else {},
        "scorer_profile": profile,
    }
