"""Seed 002's batch workflow: raw log files parsed by format, trained into a version, inferred, validated, extended."""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from shared.config import DetectorConfig, FleetwatchSettings, StreamSettings
from shared.local_infra.redis_server import RedisServer
from shared.registry import ModelRegistry, open_registry
from shared.streams.logs.formats import (
    PRESETS,
    LogFormatError,
    detect_format,
    log_format,
    parse_log_file,
    parse_log_lines,
    scan_log_files,
)
from shared.streams.logs.sessions import HISTORY_KEYS, KEY_FEATURES, SessionRule
from shared.streams.logs.stream import LogStream
from workers.log_workflow import (
    LogTrainingRequest,
    ScanOptions,
    infer_logs,
    read_corpus,
    score_logs,
    train_logs,
    training_facts,
    validate_logs,
)

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
HDFS_LINE = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38 terminating"


def test_each_preset_parses_its_format_into_time_host_level_and_component() -> None:
    cases = {
        "hdfs": (HDFS_LINE, "2008-11-09T20:36:15", "f.log", "INFO", "dfs.DataNode$PacketResponder"),
        "bgl": (
            "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL "
            "INFO instruction cache parity error corrected",
            "2005-06-03T22:42:50", "R02-M1-N0-C:J12-U11", "INFO", "KERNEL",
        ),
        "syslog": ("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: check pass; user unknown", "2024-06-14T15:16:01",
                   "combo", None, "sshd(pam_unix)"),
        "openssh": ("Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186",
                    "2024-12-10T06:55:46", "LabSZ", None, "sshd"),
        "apache": ("[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6", "2005-12-04T04:47:44",
                   "f.log", "error", None),
    }  # fmt: skip
    mtime_2024 = 1_718_000_000.0  # yearless syslog times take the file's year
    for preset, (line, time, host, level, component) in cases.items():
        parsed = parse_log_lines([line], PRESETS[preset], "f.log", mtime_2024)
        (event,) = parsed.lines
        assert parsed.unmatched == 0, preset
        assert event.timestamp.isoformat().startswith(time), preset
        assert (event.source_host, event.level, event.component) == (host, level, component), preset
        assert detect_format([line]).fields == PRESETS[preset].fields, preset  # syslog lines with a pid: openssh


def test_lines_off_the_format_are_kept_and_counted_and_take_the_previous_time() -> None:
    lines = [HDFS_LINE, "java.io.IOException: Broken pipe", "", "   at org.apache.Foo(Foo.java:12)", HDFS_LINE]
    parsed = parse_log_lines(lines, PRESETS["hdfs"], "dn.log", mtime_s=0.0)
    assert (len(parsed.lines), parsed.unmatched, parsed.untimed, parsed.skipped) == (4, 2, 2, 1)
    assert [line.message for line in parsed.lines[1:3]] == [
        "java.io.IOException: Broken pipe", "at org.apache.Foo(Foo.java:12)",
    ]  # fmt: skip
    assert len({line.timestamp for line in parsed.lines}) == 1
    assert [line.event_id for line in parsed.lines] == ["dn.log:1", "dn.log:2", "dn.log:4", "dn.log:5"]


def test_a_format_string_parses_and_a_bad_one_is_refused() -> None:
    custom = log_format(r"<Time> \[<Level>\] <Content>")
    assert custom is not None
    (line,) = parse_log_lines(["12:00 [WARN] disk almost full"], custom, "x", 0.0).lines
    assert (line.level, line.message) == ("WARN", "disk almost full")
    for bad in ("<Date> <Time>", "nonsense-preset", "<Content> (<Level>"):
        with pytest.raises(LogFormatError):
            log_format(bad)
    assert log_format("auto") is None


def test_gz_files_read_as_they_are_and_the_scan_keeps_to_depth_and_count(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "dn-1.log").write_text(HDFS_LINE + "\n")
    with gzip.open(tmp_path / "a" / "dn-2.log.gz", "wt") as handle:
        handle.write(HDFS_LINE + "\n" + HDFS_LINE + "\n")
    (tmp_path / "a" / "b" / "c" / "deep.log").write_text(HDFS_LINE + "\n")
    (tmp_path / "a" / "labels.csv").write_text("session,label\n")
    (tmp_path / "syslog.1").write_text(HDFS_LINE + "\n")
    found = scan_log_files(tmp_path, max_depth=1, max_files=50)
    assert [found.source_of(p) for p in found.files] == ["a/dn-2.log.gz", "dn-1.log", "syslog.1"]
    assert scan_log_files(tmp_path, max_depth=3, max_files=2).left_out == 2
    parsed = parse_log_file(tmp_path / "a" / "dn-2.log.gz", None)
    assert len(parsed.lines) == 2 and parsed.unmatched == 0 and parsed.pattern == PRESETS["hdfs"].pattern


# --- train → infer → validate on synthetic HDFS-like logs written as files ---------------------------------------
BLOCKS = SessionRule(idle_timeout_s=60)
"""The synthetic blocks' sessions last seconds: a minute without a line ends one."""


def write_hdfs_logs(folder: Path, lines: int, seed: int, hosts: int = 3, anomaly_rate: float = 0.05) -> dict[str, bool]:
    """`lines` synthetic LogLines of the log stream written as HDFS-format files, one per host (files hold lines
    only: the producer's end-of-session records are left out); the session labels back."""
    stream = LogStream()
    generated = stream.synthetic(lines + lines // 4, hosts, anomaly_rate=anomaly_rate, seed=seed)
    events = stream.decode(generated.payloads).events
    kept = [i for i, event in enumerate(events) if not event.ends_session][:lines]
    folder.mkdir(parents=True, exist_ok=True)
    by_host: dict[str, list[str]] = {}
    for pid, event in enumerate(events[i] for i in kept):
        stamp = event.timestamp.strftime("%y%m%d %H%M%S")
        by_host.setdefault(event.source_host, []).append(
            f"{stamp} {100 + pid % 50} {event.level} {event.component}: {event.message}"
        )
    for host, text in by_host.items():
        (folder / f"{host}.log").write_text("\n".join(text) + "\n")
    labels: dict[str, bool] = {}
    for i in kept:
        key = generated.keys[i]
        labels[key] = labels.get(key, False) or bool(generated.is_anomaly[i])
    return labels


def write_backward_sessions(folder: Path, source: Path, count: int) -> list[str]:
    """`count` of the source file's sessions replayed backwards under new block ids, an hour after its lines, into
    `folder/backward.log`: every template known, in an order never seen."""
    blocks: dict[str, list[str]] = {}
    for line in source.read_text().splitlines():
        if found := re.search(r"blk_-?\d+", line):
            blocks.setdefault(found.group(0), []).append(line.split(" ", 2)[2])
    chosen = [lines for lines in blocks.values() if len(lines) >= 8][:count]
    keys = [f"blk_{7_770_000 + i}" for i in range(len(chosen))]
    backward = [
        re.sub(r"blk_-?\d+", key, rest) for key, lines in zip(keys, chosen, strict=True) for rest in lines[::-1]
    ]
    text = [f"261001 01{second // 60:02d}{second % 60:02d} {rest}" for second, rest in enumerate(backward)]
    (folder / "backward.log").write_text("\n".join(text) + "\n")
    return keys


def write_labels(path: Path, labels: dict[str, bool]) -> Path:
    path.write_text("BlockId,Label\n" + "".join(f"{k},{'Anomaly' if v else 'Normal'}\n" for k, v in labels.items()))
    return path


@pytest.fixture
def registry_settings(
    redis_client: redis.Redis, unique_name: str, redis_server: RedisServer
) -> tuple[FleetwatchSettings, ModelRegistry]:
    small = [
        DetectorConfig(name="new_template", kind="feature_extreme", features=["line_rarity", "session_unseen"]),
        DetectorConfig(name="pca", kind="pca"),
        DetectorConfig(name="knn", kind="knn", params={"n_neighbors": 5, "random_state": 0}),
    ]
    settings = FleetwatchSettings(
        redis_url=redis_server.url,
        redis_prefix=f"{unique_name}:",
        registry_key="test-key-0123456789abcdef",
        streams={"logs": StreamSettings(detectors=small, fleet_fpr_budget=0.002)},
    )
    return settings, open_registry(settings, redis_client)


def test_train_then_infer_writes_sessions_per_detector_and_a_report(
    registry_settings: tuple[FleetwatchSettings, ModelRegistry], tmp_path: Path
) -> None:
    settings, registry = registry_settings
    write_hdfs_logs(tmp_path / "train", 12_000, seed=1)
    test_labels = write_hdfs_logs(tmp_path / "test", 4_000, seed=2)
    outcome = train_logs(settings, registry, LogTrainingRequest(tmp_path / "train", ScanOptions("hdfs"), rule=BLOCKS))

    facts = training_facts(outcome.manifest)
    assert outcome.deployed and facts["files"] == ["dn-000.log", "dn-001.log", "dn-002.log"]
    assert facts["lines"] == 12_000 and facts["unmatched_lines"] == 0 and facts["templates"] > 5
    assert facts["sessions"] > 500 and facts["start"] < facts["end"]
    # A version held back (the pointer moved during its round) has the registry's reason after the facts.
    held_back = msgspec.structs.replace(outcome.manifest, note=f"{outcome.manifest.note}; not deployed: moved")
    assert training_facts(held_back) == facts

    version = registry.load("logs", outcome.manifest.version)
    (result,) = infer_logs(version, [tmp_path / "test"], tmp_path / "out", ScanOptions())
    parsed = pq.read_table(result.out_dir / "parsed.parquet").to_pydict()
    files = [file for file in parsed["file"] if file is not None]
    assert len(files) == 4_000 and set(files) == {"dn-000.log", "dn-001.log", "dn-002.log"}
    assert all(session.startswith("blk_") for session in parsed["session"])
    # Sessions idle by the files' last time end: one end record each (no file, the template "(session end)").
    ends = [session for session, file in zip(parsed["session"], parsed["file"], strict=True) if file is None]
    assert len(set(ends)) == len(ends) >= 0.8 * len(set(parsed["session"]))
    assert [t == "(session end)" for t in parsed["template"]] == [file is None for file in parsed["file"]]
    fleet = pq.read_table(result.out_dir / "results" / "fleet.parquet").to_pydict()
    assert sum(fleet["lines"]) == 4_000 and len(fleet["session"]) == result.sessions
    for name in ("new_template", "pca", "knn"):
        table = pq.read_table(result.out_dir / "results" / f"{name}.parquet").to_pydict()
        assert table["session"] == fleet["session"]
        assert table["anomalous"] == [s < t for s, t in zip(table["score"], table["threshold"], strict=True)]
    anomalous = {s for s, a in zip(fleet["session"], fleet["anomalous"], strict=True) if a}
    truly = {key for key, value in test_labels.items() if value}
    assert len(anomalous & truly) >= 0.5 * len(truly) and len(anomalous - truly) <= 0.1 * len(anomalous)
    assert sum(pq.read_table(result.out_dir / "hourly.parquet").column("lines").to_pylist()) == 4_000
    report = result.report.read_text()
    for section in ("## Anomalous sessions", "## Top templates", "## Timeline", "## Hour of day"):
        assert section in report
    assert all((result.out_dir / chart).exists() for chart in ("timeline.png", "top-templates.png"))


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="DeepLog trains with the `deep` extra")
def test_infer_report_shows_deeplogs_expected_keys_beside_the_key_that_came(
    registry_settings: tuple[FleetwatchSettings, ModelRegistry], tmp_path: Path
) -> None:
    settings, registry = registry_settings
    deeplog = DetectorConfig(
        name="deeplog", kind="deeplog", features=list(KEY_FEATURES),
        params={"history": HISTORY_KEYS, "hidden_units": 16, "layers": 1, "top_g": 3, "epochs": 8, "random_state": 0},
    )  # fmt: skip
    small = [*settings.streams["logs"].detectors[:1], deeplog]
    logs = settings.streams["logs"].model_copy(update={"detectors": small})
    settings = settings.model_copy(update={"streams": {"logs": logs}})
    write_hdfs_logs(tmp_path / "train", 6_000, seed=5)
    write_hdfs_logs(tmp_path / "test", 3_000, seed=6, anomaly_rate=0.01)  # few enough for the report's 10 sessions
    backward = write_backward_sessions(tmp_path / "test", tmp_path / "test" / "dn-000.log", 3)
    outcome = train_logs(settings, registry, LogTrainingRequest(tmp_path / "train", ScanOptions("hdfs"), rule=BLOCKS))
    version = registry.load("logs", outcome.manifest.version)
    (result,) = infer_logs(version, [tmp_path / "test"], tmp_path / "out", ScanOptions())

    table = pq.read_table(result.out_dir / "results" / "deeplog.parquet").to_pydict()
    assert all(len(keys) == len(texts) == 3 for keys, texts in zip(table["expected_keys"], table["expected_templates"],
                                                                  strict=True))  # fmt: skip
    assert all(p[0] >= p[1] >= p[2] and sum(p) <= 1 + 1e-9 for p in table["expected_probabilities"])
    report = result.report.read_text()
    section = report.split("## DeepLog (deeplog): expected and seen keys")[1].split("\n## ")[0]
    fleet = pq.read_table(result.out_dir / "results" / "fleet.parquet").to_pydict()
    anomalous = {key for key, flag in zip(fleet["session"], fleet["anomalous"], strict=True) if flag}
    anomalous |= {key for key, flag in zip(table["session"], table["anomalous"], strict=True) if flag}
    shown = [line.removeprefix("### ").split(" (")[0] for line in section.splitlines() if line.startswith("### ")]
    assert set(backward) <= set(shown) <= anomalous and len(shown) <= 10
    unexpected = [line for line in section.splitlines() if line.startswith("- ")]
    assert unexpected and all(": seen `" in line and line.count("` 0.") == 3 for line in unexpected)

    scored = score_logs(version, read_corpus(tmp_path / "test", ScanOptions()))
    size = len(scored.stream.vocabulary.templates)
    assert scored.stream.key_text(np.array([0, 1, size + 1, size + 2])) == [
        "(no line)", f"T0 {scored.stream.vocabulary.templates[0]}", "(unseen)", "(session end)",
    ]  # fmt: skip


def test_validate_scores_sessions_and_incremental_training_extends_the_parent(
    registry_settings: tuple[FleetwatchSettings, ModelRegistry], tmp_path: Path
) -> None:
    settings, registry = registry_settings
    write_hdfs_logs(tmp_path / "train", 8_000, seed=3)
    labels = write_hdfs_logs(tmp_path / "test", 3_000, seed=4)
    first = train_logs(settings, registry, LogTrainingRequest(tmp_path / "train", ScanOptions("hdfs"), rule=BLOCKS))
    version = registry.load("logs", first.manifest.version)
    validation = validate_logs(version, score_logs(version, read_corpus(tmp_path / "test", ScanOptions())), labels)
    assert validation.evaluation is not None and validation.labelled == validation.sessions
    assert validation.evaluation.fleet.recall > 0.5 and 50 < validation.score <= 100

    new = tmp_path / "new"
    new.mkdir()
    (new / "dn-9.log").write_text(
        "".join(f"081110 0{h}0000 7 INFO dfs.DataNode: Volume scanner pass {h} done for blk_{h}\n" for h in range(9))
        + (tmp_path / "train" / "dn-000.log").read_text()
    )
    second = train_logs(settings, registry, LogTrainingRequest(new, ScanOptions("hdfs"), incremental=True))
    assert second.manifest.parent_version == first.manifest.version
    parent_stream, child_stream = version.stream, registry.load("logs", second.manifest.version).stream
    assert isinstance(parent_stream, LogStream) and isinstance(child_stream, LogStream)
    parent_templates = set(parent_stream.vocabulary.templates)
    assert parent_templates < set(child_stream.vocabulary.templates)
    assert "Volume scanner pass <NUM> done for <BLK>" in child_stream.vocabulary.templates
    assert child_stream.vocabulary.counts.sum() == parent_stream.vocabulary.counts.sum() + 9 + len(
        (tmp_path / "train" / "dn-000.log").read_text().splitlines()
    )
    assert training_facts(second.manifest)["incremental_from"] == first.manifest.version


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEETWATCH, *args], capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["logs", "train", "nowhere"], "nowhere: no such file or folder"),
        (["logs", "train", ".", "--format", "klingon"], "unknown format preset 'klingon'"),
        (["logs", "train", ".", "--session-pattern", "blk_("], "--session-pattern is not a regular expression"),
        (["logs", "train", ".", "--from", "3"], "add --incremental"),
        (["logs", "train", ".", "--max-files", "0"], "--max-files"),
        (["logs", "infer", "latest", "x.log"], "x.log: no such file or folder"),
        (["logs", "compare", "1", "2", "x.log"], "Missing option '--labels'"),
    ],
)
def test_bad_log_arguments_get_one_line_and_no_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
