"""The bench's outputs for people: a table on the terminal, `report.md` with plots beside `results.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

PEER_DESCRIPTIONS = {
    "passthrough": "confluent-kafka consume → produce, one transaction per batch with its offsets, no decoding or "
    "scoring; ~1 % of records to the alert topic, the rest to the summary topic (bench/passthrough_app.py)",
    "scorer_eos": "`fleetwatch worker`, exactly-once (one Kafka transaction per micro-batch), all detectors of "
    "the default version, user profiles in Redis",
    "scorer_at_least_once": "`fleetwatch worker`, at-least-once (produce, flush, commit offsets)",
    "scorer_eos_overlap": "`fleetwatch worker`, exactly-once with `overlap_commit` (a batch commits on a second "
    "thread while the next is scored)",
    "per_record": "seed 000's shape: poll one record, json decode, its feature row, `predict` of each model on "
    "that row, produce; auto-commit; profiles in process memory (bench/per_record_app.py)",
    "quixstreams": "Quix Streams `Application`, exactly-once; a StreamingDataFrame with a stateful `apply` per "
    "message (user history in its RocksDB state + changelog) and a dynamic `to_topic`; commits every batch-size "
    "messages or 1 s — Quix has no batch operator (bench/quix_app.py)",
    "faust": "faust-streaming agent, exactly-once; `stream.take_events(batch, within)` micro-batches scored at "
    "once, user history in a faust Table, `Topic.send` per output (bench/faust_app.py)",
    "bytewax": "Bytewax dataflow, at-least-once (Bytewax has no Kafka transactions; recovery snapshots offsets "
    "and state every 10 s epoch, its default); `KafkaSource` → `collect(batch, timeout)` micro-batches scored at "
    "once, user history in its `stateful_flat_map` state, `KafkaSink` (bench/bytewax_app.py)",
}


def _figure(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(scenario, figure, value) lines: what the terminal table and the report's summary show."""
    rows: list[tuple[str, str, str]] = []
    scenarios = results["scenarios"]
    if throughput := scenarios.get("throughput"):
        for name, rate in throughput["events_per_s"].items():
            reason = throughput["unavailable"].get(name)
            rows.append(("throughput", f"{name} events/s", _figure(rate) if rate else f"– ({reason})"[:120]))
        for name, ratio in throughput["ratios"].items():
            target = throughput["targets"][name]
            rows.append(("throughput", name, f"{_figure(ratio, 3)} (target ≥ {target['target']}, "
                         f"met: {_figure(target['met'])})"))  # fmt: skip
    if latency := scenarios.get("latency"):
        for setting in latency["settings"]:
            for level in setting["levels"]:
                rows.append(("latency", f"{setting['setting']} @ {level['load']:.0%}",
                             f"p50 {_figure(level['p50_ms'], 1)} / p95 {_figure(level['p95_ms'], 1)} / "
                             f"p99 {_figure(level['p99_ms'], 1)} / max {_figure(level['max_ms'], 1)} ms "
                             f"(n={level['count']:,})"))  # fmt: skip
            rows.append(("latency", f"{setting['setting']}: inputs without output / outputs repeated",
                         f"{setting['missing']:,} / {setting['repeated']:,} of {setting['produced']:,}"))  # fmt: skip
    if reload := scenarios.get("reload"):
        rows.append(("reload", "publish → first output by new version, every partition (s)",
                     _figure(reload["publish_to_first_new_output_s"]["every_partition"], 3)))  # fmt: skip
        for window in ("before", "around_swap"):
            figures = reload[window]
            rows.append(("reload", f"{window}: events/s, p99 ms",
                         f"{_figure(figures['events_per_s'])}, {_figure(figures['p99_ms'], 1)}"))  # fmt: skip
    if scaling := scenarios.get("scaling"):
        for run in scaling["throughput"]:
            rows.append(("scaling", f"{run['workers']} worker(s) events/s, broker CPU cores",
                         f"{_figure(run['events_per_s'])}, {_figure(run['broker_cpu_cores'], 2)}"))  # fmt: skip
        rebalance = scaling["rebalance"]
        rows.append(("scaling", "join: first output from moved partitions (s)",
                     _figure(rebalance["join"]["first_output_from_moved_s"], 3)))  # fmt: skip
        rows.append(("scaling", "kill: reassigned / outputs visible again (s)",
                     f"{_figure(rebalance['kill']['reassigned_s'], 3)} / "
                     f"{_figure(rebalance['kill']['outputs_visible_again_s'], 3)}"))  # fmt: skip
    if training := scenarios.get("training"):
        for run in training["runs"]:
            if "failure" in run:
                rows.append(("training", f"{run['rows']:,} rows", f"failed: {run['failure'][-1]}"))
                continue
            per_detector = ", ".join(f"{name} {d['seconds']:.1f}s/{d['peak_rss_above_baseline_mib']:.0f}MiB"
                                     for name, d in run["detectors"].items())  # fmt: skip
            total = run["total"]
            rows.append(("training", f"{run['rows']:,} rows total",
                         f"{total['seconds']:.1f}s, peak {total['peak_rss_mib']:.0f} MiB"))  # fmt: skip
            rows.append(("training", f"{run['rows']:,} rows per detector", per_detector))
    if memory := scenarios.get("memory"):
        for step in memory["steps"]:
            rows.append(("memory", f"worker peak RSS after {step['versions_loaded']} version(s) loaded in a row",
                         f"{_figure(step['peak_rss_mib'], 1)} MiB"))  # fmt: skip
    if streams := scenarios.get("streams"):
        for name, run in streams["streams"].items():
            rows.append(("streams", f"{name}: scorer (exactly-once) / passthrough events/s, ratio",
                         f"{_figure(run['scorer_eos']['events_per_s'])} / {_figure(run['passthrough']['events_per_s'])}"
                         f", {_figure(run['scorer_over_passthrough'], 3)}"))  # fmt: skip
        rows.append(("streams", "transactions: scorer (exactly-once) events/s, same run",
                     _figure(streams["transactions_scorer_eos_events_per_s"])))  # fmt: skip
    if deep := scenarios.get("deep"):
        for kind, run in deep["runs"].items():
            if "failure" in run:
                rows.append(("deep", f"{kind}: training", f"failed: {run['failure'][-1] if run['failure'] else '?'}"))
                continue
            fit, score = run["training"], run["inference"]
            training = (
                f"{fit['seconds']:.1f}s, {fit['epochs']} of {fit['max_epochs']} epochs, peak {fit['peak_rss_mib']:.0f} "
                f"MiB ({fit['peak_rss_above_baseline_mib']:.0f} above the interpreter with Keras loaded)"
            )
            inference = f"{_figure(score['ms_per_1000_rows'], 1)} ms / {_figure(score['ms_per_batch_median'], 1)} ms"
            rows.append(("deep", f"{kind}: training on {run['rows_train']:,} rows", training))
            rows.append(("deep", f"{kind}: inference per 1,000 rows / per batch of {score['batch_rows']:,}", inference))
    return rows


def print_tables(results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"fleetwatch bench ({results['mode']}, {results['seconds']:.0f} s)")
    for column in ("scenario", "figure", "value"):
        table.add_column(column, overflow="fold")
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)


def _save_with_legend(figure: Any, axis: Any, path: Path) -> None:
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_latency_cdf(latency: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for setting in latency["settings"]:
        for level in setting["levels"]:
            points = level["cdf_ms"]
            if points:
                quantiles = [i / len(points) for i in range(len(points))]
                axis.plot(points, quantiles, label=f"{setting['setting']} @ {level['load']:.0%}")
    axis.set_xscale("log")
    axis.set_xlabel("produce → visible to read_committed reader (ms, log scale)")
    axis.set_ylabel("share of events")
    axis.set_title("End-to-end latency CDF")
    _save_with_legend(figure, axis, path)


def _plot_latency_tradeoff(latency: dict[str, Any], path: Path) -> None:
    """p99 latency against the load each setting carried: the curve nearest the bottom right wins."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for setting in latency["settings"]:
        levels = [level for level in setting["levels"] if level["p99_ms"] is not None]
        axis.plot(
            [level["produced_events_per_s"] for level in levels],
            [level["p99_ms"] for level in levels],
            marker="o",
            linestyle="-" if setting["delivery"] == "at_least_once" else "--",
            label=setting["setting"],
        )
    axis.set_yscale("log")
    axis.set_xlabel("events/s offered (25 / 50 / 75 % of the exactly-once ceiling)")
    axis.set_ylabel("p99 produce → visible (ms, log scale)")
    axis.set_title("p99 latency against load, per batch size × fill (dashed: exactly-once)")
    _save_with_legend(figure, axis, path)


def _plot_reload(reload: dict[str, Any], path: Path) -> None:
    series = reload["throughput_series"]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.step([t for t, _ in series], [r for _, r in series], where="post")
    axis.axvline(0.0, color="red", linestyle="--", label="new version published")
    if (swap := reload["publish_to_first_new_output_s"]["every_partition"]) is not None:
        axis.axvline(swap, color="green", linestyle=":", label="new version on every partition")
    axis.set_xlabel("seconds from publish")
    axis.set_ylabel("outputs visible per second")
    axis.set_title("Throughput across a hot reload (50 % load)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    scenarios = results["scenarios"]
    machine, versions = results["machine"], results["versions"]
    lines = [
        f"# fleetwatch bench ({results['mode']})",
        "",
        f"Run {results['started_at']}, {results['seconds']:.0f} s. Machine: {machine['cpu_model']}, "
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']}.",
        "Versions: " + ", ".join(f"{name} {value}" for name, value in versions.items()) + ".",
        f"Servers: {'started by the bench' if results['servers']['own'] else 'given by the environment'}.",
        "",
        *([f"**{results['note']}**", ""] if "note" in results else []),
        "| scenario | figure | value |",
        "|---|---|---|",
        *(f"| {s} | {f} | {v} |" for s, f, v in summary_rows(results)),
        "",
    ]
    if throughput := scenarios.get("throughput"):
        lines += ["## Throughput contenders", ""]
        lines += [f"- **{name}**: {text}" for name, text in PEER_DESCRIPTIONS.items()]
        parameters = throughput["parameters"]
        lines += [
            "",
            f"{', '.join(parameters['peer_time_budget_applies_to'])} each run for "
            f"{parameters['peer_time_budget_s']:.0f} s after their first output instead of over all "
            f"{parameters['events']:,} events (the slowest would take hours over them); the others consume "
            f"everything. Parameters: `{parameters}`.",
            "",
        ]
        if share := throughput["scorer_stage_share"]:
            lines += ["Where the exactly-once scorer's batch time goes (its own stage histograms):", ""]
            lines += ["| stage | seconds | share |", "|---|---:|---:|"]
            lines += [f"| {stage} | {throughput['scorer_stage_seconds'][stage]:.3f} | {value:.1%} |"
                      for stage, value in share.items()]  # fmt: skip
            lines.append("")
        if (profile := throughput.get("scorer_profile")) and profile.get("samples"):
            lines += [
                f"scorer/passthrough missed its target, so a separate exactly-once run was sampled with py-spy "
                f"({profile['samples']:,} samples over every thread; raw stacks in `{profile['raw_file']}`). "
                "Project functions by share of samples they were on the stack for:",
                "",
                "| function | share |",
                "|---|---:|",
                *(f"| `{e['function']}` | {e['share']:.1%} |" for e in profile["project_inclusive"]),
                "",
                "Self time (where the interpreter actually was):",
                "",
                "| function | share |",
                "|---|---:|",
                *(f"| `{e['function']}` | {e['share']:.1%} |" for e in profile["self"]),
                "",
            ]
        elif profile:
            lines += [f"Profiling: {profile.get('unavailable')}", ""]
    if latency := scenarios.get("latency"):
        _plot_latency_cdf(latency, out_dir / "latency_cdf.png")
        _plot_latency_tradeoff(latency, out_dir / "latency_tradeoff.png")
        lines += [
            "## Latency",
            "",
            f"Parameters: `{latency['parameters']}`.",
            "",
            "![latency against load per setting](latency_tradeoff.png)",
            "",
            "![latency CDF](latency_cdf.png)",
            "",
        ]
    if reload := scenarios.get("reload"):
        _plot_reload(reload, out_dir / "reload_throughput.png")
        lines += ["## Hot reload", "", f"Parameters: `{reload['parameters']}`.", "",
                  "![throughput across a reload](reload_throughput.png)", ""]  # fmt: skip
    for name in ("scaling", "training", "memory", "streams", "deep"):
        if name in scenarios:
            lines += [f"## {name.capitalize()}", "", f"Parameters: `{scenarios[name]['parameters']}`.", ""]
    lines += ["Every figure, with its repetitions and spread, is in `results.json`.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
