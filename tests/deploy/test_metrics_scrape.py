"""The dashboard and the alert rules, checked against what a running `fleetwatch worker` serves on /metrics.

test_metric_names.py checks every name against shared.metrics' registry. This starts a real worker on the
session's broker and Redis, sends it valid and malformed events, scrapes /metrics and checks that each
worker metric the dashboard or the rules query is exposed, and has samples unless only a failure moves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import redis
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from shared.artifact_store import RedisArtifactStore
from shared.config import DetectorConfig, StreamSettings, topic_environment
from shared.http_endpoints import wait_until_ready
from shared.kafka_client import KafkaConnection, produce_all
from shared.local_infra.processes import free_port
from shared.local_infra.redis_server import RedisServer
from shared.registry import ModelRegistry
from shared.streams.transactions.files import transaction_payloads
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import train_round
from shared.training_data import training_data_from_payloads

from .test_metric_names import (
    alert_queries,
    dashboard_queries,
    exposed_metric_names,
    metric_names_in,
    metric_types,
    unknown_names,
)

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
REGISTRY_KEY = "metrics-scrape-test-key-0123456789"
DETECTORS = [
    DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 20, "random_state": 0}),
    DetectorConfig(name="robust_z", kind="robust_zscore"),
]
SCORED_EVENTS = 300
MALFORMED = [b"not json", b'{"event_id": "x"}']
# The trainer's and the summarizer's metrics. Every process registers all of shared.metrics, so a worker's
# /metrics declares these too, but only `fleetwatch trainer` and the summarizer ever move them: they are
# checked against the registry here, and their samples belong to tests of those processes.
NOT_THE_WORKERS = ("fleetwatch_training_", "fleetwatch_summary_", "fleetwatch_rate_alerts_", "fleetwatch_changelog_")
# Worker metrics that only an aborted transaction or a Redis failure moves: a healthy run leaves them empty.
ONLY_ON_FAILURE = {"fleetwatch_kafka_transactions_aborted_total", "fleetwatch_profile_store_errors_total"}


def is_worker_metric(name: str) -> bool:
    return name.startswith("fleetwatch_") and not name.startswith(NOT_THE_WORKERS)


@dataclass(frozen=True)
class RunningWorker:
    url: str
    events_topic: str
    log: Path
    # Events the deployed model can score (from the distribution it was trained on).
    events: list[bytes]

    def scrape(self) -> list[Metric]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=3) as response:
            return list(text_string_to_metric_families(response.read().decode()))

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, worker: RunningWorker) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s; worker log:\n{worker.log_tail()}"
        time.sleep(0.3)


def publish_small_model(registry: ModelRegistry) -> list[bytes]:
    """Train two small detectors on generated events, deploy them, and return the events to score."""
    data = generate_transactions(GeneratorSpec(users=200, events=2_000, seed=53))
    payloads = transaction_payloads(data, 0, len(data))
    settings = StreamSettings(detectors=DETECTORS, fleet_fpr_budget=0.02, shadow_floor_auc=0.0)
    data = training_data_from_payloads(TRANSACTIONS, payloads, "test", 1.0, len(payloads))
    trained = train_round(data, settings, TRANSACTIONS, None)
    registry.publish(trained.bundle, trained.draft, deploy=True)
    return payloads[-SCORED_EVENTS:]


@pytest.fixture
def running_worker(
    kafka: KafkaConnection, redis_server: RedisServer, make_topic: Callable[..., str], unique_name: str, tmp_path: Path
) -> Iterator[RunningWorker]:
    """A `fleetwatch worker` process with a deployed model version, ready; killed at the end, also on failure."""
    topics = {
        "input": make_topic("events"),
        "alerts": make_topic("alerts"),
        "summary": make_topic("summary"),
        "deadletter": make_topic("deadletter"),
    }
    prefix = f"{unique_name}:"
    client = redis.Redis.from_url(redis_server.url)
    payloads = publish_small_model(
        ModelRegistry(client, RedisArtifactStore(client, prefix), REGISTRY_KEY.encode(), prefix)
    )
    client.close()
    port = free_port()
    env = {
        **os.environ,
        "FLEETWATCH_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "FLEETWATCH_REDIS_URL": redis_server.url,
        "FLEETWATCH_REDIS_PREFIX": prefix,
        "FLEETWATCH_REGISTRY_KEY": REGISTRY_KEY,
        "FLEETWATCH_WORKER__GROUP_ID": f"scorers-{unique_name}",
        "FLEETWATCH_WORKER__METRICS_PORT": str(port),
        **topic_environment(topics),
    }
    worker = RunningWorker(f"http://127.0.0.1:{port}", topics["input"], tmp_path / "worker.log", payloads)
    with worker.log.open("wb") as log:
        process = subprocess.Popen([FLEETWATCH, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_until_ready(port, lambda: process.poll() is None, timeout_s=30):
            raise AssertionError(f"worker not ready in 30 s (exit code {process.poll()}):\n{worker.log_tail()}")
        yield worker
    finally:
        process.kill()
        process.wait()


def events_counted(families: list[Metric]) -> float:
    return sum(
        s.value for f in families if f.name == "fleetwatch_events" for s in f.samples if s.name.endswith("_total")
    )


def test_running_worker_exposes_every_worker_metric_the_dashboard_and_alerts_query(
    running_worker: RunningWorker, kafka: KafkaConnection, yaml: ModuleType
) -> None:
    worker = running_worker
    sent = worker.events + MALFORMED
    keys = [f"user-{i % 20}" for i in range(len(sent))]
    assert produce_all(kafka, worker.events_topic, keys, sent) == 0

    wait_for(lambda: events_counted(worker.scrape()) == len(sent), 30, f"{len(sent)} events counted", worker)
    # librdkafka's statistics (the lag gauge's source) come every 5 s: let one round arrive.
    time.sleep(5.5)
    families = worker.scrape()

    queries = dashboard_queries() + alert_queries(yaml)
    referenced = {name for query in queries for name in metric_names_in(query)}
    worker_metrics = {name for name in referenced if is_worker_metric(name)}
    assert {"fleetwatch_events_total", "fleetwatch_consumer_lag_records", "fleetwatch_deployed_version",
            "fleetwatch_event_to_output_latency_seconds_bucket"} <= worker_metrics  # fmt: skip
    # Declared (HELP/TYPE) by the running worker: every worker metric the dashboard and the rules query.
    assert {name for name in unknown_names(queries, metric_types(families)) if is_worker_metric(name)} == set()
    # With samples after this traffic: all of them but the failure counters (the lag gauge included, which
    # under exactly-once must come from the consumer's position, not from offsets it never commits itself).
    with_samples = metric_types(family for family in families if family.samples)
    empty = {name for name in unknown_names(queries, with_samples) if is_worker_metric(name)}
    assert empty - ONLY_ON_FAILURE == set()
    # The other processes' names, which a worker never moves, against the registry that declares them.
    assert {name for name in unknown_names(queries, exposed_metric_names()) if not is_worker_metric(name)} == set()

    dead_letters = {s.labels["kind"]: s.value for f in families if f.name == "fleetwatch_dead_letters"
                    for s in f.samples if s.name.endswith("_total")}  # fmt: skip
    assert sum(dead_letters.values()) == len(MALFORMED), dead_letters
