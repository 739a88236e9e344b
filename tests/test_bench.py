"""The benchmark suite: its measuring helpers on their own, and one `fleetwatch bench --quick` end to end.

The end-to-end run uses the session's broker and Redis (through FLEETWATCH_KAFKA_BOOTSTRAP and
FLEETWATCH_REDIS_URL, with a Redis prefix of its own) and asserts that every scenario produced and
counted outputs, never that a speed was reached: speeds depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.probes import OutputTail, percentiles
from bench.profiling import summarize
from bench.report import summary_rows
from shared.kafka_client import KafkaConnection
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.redis_server import RedisServer

REPOSITORY = Path(__file__).resolve().parent.parent
THROUGHPUT_CONTENDERS = {
    "passthrough", "scorer_eos", "scorer_at_least_once", "scorer_eos_overlap", "per_record", "quixstreams", "faust",
    "bytewax",
}  # fmt: skip
RATIOS = {
    "scorer_over_passthrough", "scorer_at_least_once_over_passthrough", "scorer_eos_overlap_over_passthrough",
    "scorer_over_per_record",
    "scorer_over_quixstreams", "scorer_over_faust", "scorer_over_bytewax", "scorer_at_least_once_over_bytewax",
}  # fmt: skip


def test_sustained_rate_leaves_out_the_first_batch_and_counts_the_time_after_it() -> None:
    tail = OutputTail(KafkaConnection("unused:9092"), [])
    tail.arrivals = [(100.0, 1000), (100.5, 500), (101.0, 500)]
    assert tail.sustained_rate() == pytest.approx(1000.0)
    assert tail.sustained_rate(since=100.4) == pytest.approx(1000.0)
    assert OutputTail(KafkaConnection("unused:9092"), []).sustained_rate() is None


def test_percentiles_are_in_milliseconds_and_say_how_many_values() -> None:
    figures = percentiles([0.001 * i for i in range(1, 101)])
    assert figures["count"] == 100 and figures["max_ms"] == pytest.approx(100.0)
    assert figures["p50_ms"] == pytest.approx(50.5) and figures["p99_ms"] == pytest.approx(99.01)
    assert percentiles([])["p99_ms"] is None


def test_profile_summary_names_project_functions_by_their_folder(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (workers/scoring_worker.py:10);score_batch (shared/scoring.py:5);_score (/x/sklearn/tree.py:1) 30\n"
        "run (workers/scoring_worker.py:10);read (/work/main/shared/profile_store.py:70) 70\n"
    )
    summary = summarize(raw)
    assert summary["samples"] == 100
    assert summary["self"][0] == {"function": "read (shared/profile_store.py)", "share": 0.7}
    inclusive = {entry["function"]: entry["share"] for entry in summary["project_inclusive"]}
    assert inclusive == {
        "run (workers/scoring_worker.py)": 1.0,
        "read (shared/profile_store.py)": 0.7,
        "score_batch (shared/scoring.py)": 0.3,
    }


def test_quick_bench_scores_and_counts_outputs_in_every_scenario(
    kafka_broker: KafkaBroker, redis_server: RedisServer, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    env = {
        **os.environ,
        "FLEETWATCH_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "FLEETWATCH_REDIS_URL": redis_server.url,
        "FLEETWATCH_REDIS_PREFIX": f"{unique_name}:",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "bench", "--quick", "--out", str(out)],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert {"cpu_model", "cores", "memory_gib"} <= set(results["machine"])
    assert {"python", "librdkafka", "kafka_broker"} <= set(results["versions"])
    assert set(results["scenarios"]) == {
        "throughput", "latency", "reload", "scaling", "training", "memory", "streams", "deep",
    }  # fmt: skip

    throughput = results["scenarios"]["throughput"]
    assert set(throughput["events_per_s"]) == THROUGHPUT_CONTENDERS and set(throughput["ratios"]) == RATIOS
    for contender in ("passthrough", "scorer_eos", "scorer_at_least_once", "scorer_eos_overlap"):
        assert throughput["runs"][contender]["visible_outputs"] == [20_000], contender
        assert throughput["events_per_s"][contender] > 0
    for peer in ("per_record", "quixstreams", "faust", "bytewax"):  # a peer that cannot run says why, with no number
        assert (throughput["events_per_s"][peer] or 0) > 0 or throughput["unavailable"][peer]
    assert throughput["scorer_stage_seconds"]["score"] > 0

    for setting in results["scenarios"]["latency"]["settings"]:
        assert setting["visible"] > 0 and all(level["count"] > 0 for level in setting["levels"])
        assert setting["missing"] == 0 and setting["repeated"] == 0, setting["setting"]
    reload = results["scenarios"]["reload"]
    assert reload["publish_to_first_new_output_s"]["every_partition"] is not None
    assert reload["before"]["count"] > 0 and reload["around_swap"]["count"] > 0
    scaling = results["scenarios"]["scaling"]
    assert all(run["events_per_s"] for run in scaling["throughput"])
    assert scaling["rebalance"]["kill"]["outputs_visible_again_s"] is not None
    assert all("total" in run for run in results["scenarios"]["training"]["runs"])
    assert all(step["peak_rss_mib"] > 0 for step in results["scenarios"]["memory"]["steps"])
    streams = results["scenarios"]["streams"]
    assert set(streams["streams"]) == {"logs", "metrics"}  # the catalog's own (tests add plug-ins to theirs)
    for name, run in streams["streams"].items():  # every event of every other stream scored once, and timed
        assert run["scorer_eos"]["visible_outputs"] == [run["events"]] and run["scorer_over_passthrough"], name
    assert "deeplog" in streams["streams"]["logs"]["detectors"]  # every default log detector loaded in the worker
    deep = results["scenarios"]["deep"]  # each kind trained and timed in a fresh interpreter of its own
    for kind, run in deep["runs"].items():
        assert "failure" not in run, run
        assert run["kind"] == kind and run["rows_train"] == deep["parameters"]["training_rows"][kind]
        assert run["training"]["epochs"] >= 1 and run["training"]["seconds"] > 0
        assert run["training"]["peak_rss_mib"] >= run["training"]["baseline_rss_mib"] > 0
        inference = run["inference"]
        assert inference["rows"] == deep["parameters"]["score_rows"] and inference["ms_per_1000_rows"] > 0
        assert inference["batches"] == deep["parameters"]["score_rows"] // deep["parameters"]["batch_size"]
    assert deep["runs"]["deeplog"]["columns"] == 11
    assert [row[1].split(":")[0] for row in summary_rows(results) if row[0] == "deep"] == [
        "deeplog", "deeplog", "mscred", "mscred",
    ]  # fmt: skip

    report = (out / "report.md").read_text()
    assert "## Deep" in report
    assert "latency_cdf.png" in report and (out / "latency_cdf.png").stat().st_size > 0
    assert "latency_tradeoff.png" in report and (out / "latency_tradeoff.png").stat().st_size > 0
    assert (out / "reload_throughput.png").stat().st_size > 0
    assert len(summary_rows(results)) > 20
    print(f"\nfleetwatch bench --quick took {elapsed:.0f}s (bench's own figure: {results['seconds']:.0f}s)")
