"""`fleetwatch demo` on the session's broker and Redis, small: every stream trained, served side by side by the two
workers, and every event's one output counted."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shared.config import FleetwatchSettings, StreamSettings, TopicNames, WorkerSettings
from shared.kafka_client import KafkaConnection, ensure_topics
from workers.demo import demo_streams, drive_demo


def test_the_demo_scores_transactions_sensor_readings_and_log_lines_once_each_and_dead_letters_the_malformed(
    kafka: KafkaConnection, redis_server: Any, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(tmp_path / "dev"))  # the registry's dev key, shared with the workers
    plans = demo_streams(events=4_000, users=400, readings=2_400, pumps=8, log_lines=3_000, hosts=4)
    settings = FleetwatchSettings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_server.url,
        redis_prefix=f"{unique_name}:",
        topics=TopicNames(**{role: f"{role}.{unique_name}" for role in ("alerts", "deadletter", "reports")}),
        streams={
            plan.name: StreamSettings(
                input_topic=f"{plan.name}.{unique_name}", summary_topic=f"{plan.name}-ok.{unique_name}"
            )
            for plan in plans
        },
        worker=WorkerSettings(streams=[plan.name for plan in plans], group_id=f"scorers-{unique_name}"),
    )
    ensure_topics(kafka, settings.all_topics(), partitions=3)
    printed = io.StringIO()
    console = Console(file=printed, width=200)

    runs = drive_demo(settings, plans, seed=7, work=tmp_path / "demo", console=console, timeout_s=240)

    assert set(runs) == {"transactions", "metrics", "logs"}
    for name, run in runs.items():
        tally = run.tally
        assert tally.scored == run.expected, name
        assert tally.scored_ids == set(run.history.event_id.tolist()), f"{name}: one output per input"
        assert tally.outcomes["deadletter"] == len(run.plan.malformed) == 2, name
        assert 0 < tally.outcomes["alert"] < run.expected, name
        assert sum(tally.by_version.values()) == run.expected and set(tally.by_version) <= set(run.versions), name
    assert runs["metrics"].versions == [1] and runs["metrics"].tally.by_version == {1: 2_400}
    assert runs["logs"].versions == [1] and runs["logs"].tally.by_version == {1: 3_000}
    assert len(runs["transactions"].versions) == 2, "v2 trained on more history, promoted mid-stream"
    summary = printed.getvalue()
    assert "metrics" in summary and "2,400 of 2,400" in summary and "recall vs ground truth" in summary
    assert "logs" in summary and "3,000 of 3,000" in summary
