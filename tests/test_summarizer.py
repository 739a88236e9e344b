"""`fleetwatch summarizer` as a real process on the real broker: window figures, recovery, rate alerts, report.

The input is alert and summary records as the workers write them, with known event times: one 60 s
window that passes the rate criterion (10 alerts, one user with 5 of them), one just below it (9
alerts), and a late-coming record that moves event time past both so they close.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.config import FleetwatchSettings, SummarizerSettings, topic_environment
from shared.http_endpoints import scrape_metrics
from shared.kafka_client import KafkaConnection
from tests.fleet import FLEETWATCH
from tests.summarizer_processes import Scored, Summarizers
from workers.summarizer import build_app

T0 = 1_780_000_020  # a minute boundary
SEGMENTS, TYPES = ("tight-passive", "loose-active"), ("purchase", "transfer")


def window(start: int, normals: int, alerts: int, burst_user: str | None = None) -> list[Scored]:
    records = [
        Scored(f"u{i % 7}", start + (i * 53) % 60, 10.0 + i, SEGMENTS[i % 2], TYPES[(i // 2) % 2], False)
        for i in range(normals)
    ]
    for i in range(alerts):
        user = burst_user if burst_user is not None and i < 5 else f"a{start}-{i}"
        records.append(Scored(user, start + (i * 7) % 60, 500.0 + i, SEGMENTS[i % 2], TYPES[0], True))
    return sorted(records, key=lambda r: r.at_s)


PASSING = window(T0, normals=40, alerts=10, burst_user="mallory")
BELOW = window(T0 + 60, normals=30, alerts=9)
CLOSER = Scored("closer", T0 + 1000, 1.0, SEGMENTS[0], TYPES[0], False)


def expected_figures(records: list[Scored]) -> dict[tuple[str, str], dict[str, Any]]:
    """The direct computation: per (segment, type), counts, sums and distinct users of one window."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        f = figures.setdefault((r.segment, r.transaction_type), {"normal": 0, "sum": 0.0, "users": set(), "alerts": 0})
        if r.alert:
            f["alerts"] += 1
        else:
            f["normal"] += 1
            f["sum"] += r.amount
            f["users"].add(r.user)
    return figures


def aggregated(port: int) -> float:
    """Records folded into windows so far, from the summarizer's own /metrics."""
    pattern = r'fleetwatch_summary_records_aggregated_total\{kind="(?:alert|normal)",stream="transactions"\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, scrape_metrics(port)))


def wait_until(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


@pytest.fixture
def summarizers(kafka: KafkaConnection, make_topic: Any, unique_name: str, tmp_path: Path) -> Iterator[Summarizers]:
    topics = {
        "alerts": make_topic("alerts", partitions=3),
        "summary": make_topic("summary", partitions=3),
        "reports": make_topic("reports"),
    }
    env = {
        **os.environ,
        "FLEETWATCH_CONFIG": str(tmp_path / "absent.toml"),
        "FLEETWATCH_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "FLEETWATCH_LOG_FORMAT": "json",
        "FLEETWATCH_SUMMARIZER__APP_ID": f"summarizer-{unique_name}",
        "FLEETWATCH_SUMMARIZER__SESSION_TIMEOUT_S": "6",  # a killed one's successor waits 6 s, not 60
        "FLEETWATCH_SUMMARIZER__WINDOW_SIZES_S": "[60]",
        # Alerts and summaries are read by two agents, so one may run ahead of the other by a batch.
        "FLEETWATCH_SUMMARIZER__ALLOWED_LATENESS_S": "300",
        "FLEETWATCH_SUMMARIZER__PARTITIONS": "2",
        "FLEETWATCH_SUMMARIZER__BATCH_TIMEOUT_S": "0.2",
        "FLEETWATCH_SUMMARIZER__COMMIT_INTERVAL_S": "0.2",
        "FLEETWATCH_SUMMARIZER__RATE__MIN_ALERTS": "10",
        "FLEETWATCH_SUMMARIZER__RATE__ENTITY_MAX_ALERTS": "3",
        "FLEETWATCH_SUMMARIZER__REPORTS_FILE": str(tmp_path / "window-reports.jsonl"),
        **topic_environment(topics),
    }
    group = Summarizers(kafka, env, topics, tmp_path)
    yield group
    for process in group.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_figures(reports: list[dict[str, Any]], start: int, records: list[Scored]) -> None:
    start_iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start))
    mine = {
        (r["dimensions"]["segment"], r["dimensions"]["transaction_type"]): r
        for r in reports
        if r["window_start"] == start_iso
    }
    expected = expected_figures(records)
    assert sorted(mine) == sorted(expected), "one report per key, no more, no fewer"
    for key, figures in expected.items():
        report = mine[key]
        assert report["normal"]["count"] == figures["normal"]
        assert report["normal"]["measure_sum"] == pytest.approx(figures["sum"])
        assert report["normal"]["distinct_entities"] == len(figures["users"])
        assert report["alerts"]["count"] == figures["alerts"]
        assert report["scored"] == figures["normal"] + figures["alerts"]
        assert sum(report["normal"]["score_histograms"]["iforest"]) == figures["normal"]
        assert report["alerts"]["by_detector"] == ({"iforest": figures["alerts"]} if figures["alerts"] else {})


def test_windows_rate_alerts_and_escalations_from_a_known_stream(summarizers: Summarizers, tmp_path: Path) -> None:
    _, port = summarizers.start()
    summarizers.produce(PASSING[:25])
    wait_until(lambda: aggregated(port) >= 25)  # a second batch: the window's figures come from merged partials
    summarizers.produce(PASSING[25:] + BELOW)
    wait_until(lambda: aggregated(port) >= len(PASSING) + len(BELOW))
    summarizers.produce([CLOSER])  # event time moves past both windows and their allowed lateness
    reports = summarizers.wait_for_reports(windows=2)
    metrics = scrape_metrics(port)
    watermark = re.search(r'fleetwatch_summary_watermark_timestamp_seconds\{stream="transactions"\} (\S+)', metrics)
    assert watermark is not None and float(watermark.group(1)) == CLOSER.at_s
    assert 'fleetwatch_summary_active_partitions{stream="transactions"} 1.0' in metrics  # the records' one input

    assert_figures(reports, T0, PASSING)
    assert_figures(reports, T0 + 60, BELOW)
    assert len(reports) == len(expected_figures(PASSING)) + len(expected_figures(BELOW)), "each window reported once"
    written = (tmp_path / "window-reports.jsonl").read_text().splitlines()
    assert sorted(msgspec.json.decode(line)["window_start"] for line in written) == sorted(
        r["window_start"] for r in reports
    ), "the optional file holds the same reports"

    alerts = summarizers.records("alerts")
    rate_alerts = [a for a in alerts if a.get("type") == "rate_alert"]
    assert [(a["alerts"], a["scored"], a["criteria"]) for a in rate_alerts] == [(10, 50, ["absolute"])]
    assert rate_alerts[0]["top_entities"][0] == ["mallory", 5]
    escalations = [a for a in alerts if a.get("type") == "entity_escalation"]
    assert [e["entity"] for e in escalations] == ["mallory"]

    out = tmp_path / "report"
    result = subprocess.run(
        [FLEETWATCH, "report", "--out", str(out), "--window-s", "60"], env=summarizers.env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert "2 windows, 89 scored, 19 alerts (21.35%)" in text
    assert "| mallory | 5 |" in text
    charts = sorted(out.glob("*.png"))
    assert len(charts) == 6 and all(chart.stat().st_size > 1000 for chart in charts)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_restarted_summarizer_recovers_its_windows_from_the_changelog(
    summarizers: Summarizers, stop: signal.Signals
) -> None:
    first, port = summarizers.start()
    summarizers.produce(PASSING[:25])
    wait_until(lambda: aggregated(port) >= 25)
    first.send_signal(stop)
    assert first.wait(timeout=60) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    assert summarizers.records("reports") == [], "the window was still open when it stopped"

    _, port = summarizers.start()  # same app id: recovers the table from its changelog, resumes after the offsets
    summarizers.produce(PASSING[25:])
    wait_until(lambda: aggregated(port) >= len(PASSING) - 25)
    summarizers.produce([CLOSER])
    reports = summarizers.wait_for_reports(windows=1)
    # Figures equal to an uninterrupted run's (the direct computation): nothing lost, nothing counted twice.
    assert_figures(reports, T0, PASSING)
    assert len(reports) == len(expected_figures(PASSING))
    rate_alerts = [a for a in summarizers.records("alerts") if a.get("type") == "rate_alert"]
    assert len(rate_alerts) == 1


@pytest.mark.parametrize("session_s", [6.0, 60.0, 120.0])
def test_the_session_timeout_keeps_faust_s_request_timeout_above_it_and_heartbeats_within_a_third(
    tmp_path: Path, session_s: float
) -> None:
    app = build_app(
        FleetwatchSettings(summarizer=SummarizerSettings(session_timeout_s=session_s)), tmp_path, threading.Event()
    )
    assert app.conf.broker_session_timeout == session_s
    assert app.conf.broker_request_timeout >= session_s  # else faust refuses to start its consumer
    assert app.conf.broker_heartbeat_interval <= session_s / 3


def test_internal_topics_and_the_changelog_get_the_configured_replication_factor(tmp_path: Path) -> None:
    settings = FleetwatchSettings(summarizer=SummarizerSettings(replication_factor=3))
    app = build_app(settings, tmp_path, threading.Event())
    # faust declares its changelog and internal topics with this unless a topic names its own.
    assert app.conf.topic_replication_factor == 3
    assert app.tables["windows"].changelog_topic.replicas is None
