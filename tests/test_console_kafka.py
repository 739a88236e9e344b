"""The console on the real broker: alerts in from the alert topic, interventions and audit records out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psycopg
import pytest
from fastapi.testclient import TestClient

from shared.console_auth import Role
from shared.console_store import StoreUnavailable
from shared.kafka_client import KafkaConnection, producer, read_all
from shared.local_infra.processes import free_port
from tests.console_support import alert_payload, bearer, make_services
from tests.postgres_server import running_postgres
from workers.console import create_app
from workers.console_feeds import ConsoleFeeds, FeedTopics


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_alerts_flow_in_and_interventions_and_audit_records_flow_out(
    kafka: KafkaConnection, make_topic: Callable[..., str], unique_name: str, tmp_path: Path
) -> None:
    topics = FeedTopics(make_topic("alerts"), make_topic("reports"), make_topic("interventions"), make_topic("audit"))
    services = make_services(f"sqlite:///{tmp_path}/console.db")
    feeds = ConsoleFeeds(kafka, topics, services.store, services.desk, services.automation_rules(), unique_name)
    services.on_applied.append(feeds.wake)
    writer = producer(kafka)
    writer.produce(topics.alerts, alert_payload("user-77", "high"), key="user-77")
    writer.produce(topics.alerts, b"not json", key="x")  # skipped, counted, not fatal
    poisoned = {**msgspec.json.decode(alert_payload("user-78", "high")), "detected_at": None}
    writer.produce(topics.alerts, msgspec.json.encode(poisoned), key="user-78")  # as well
    assert writer.flush(10) == 0
    feeds.start()
    try:
        wait_until(lambda: len(services.store.rows("SELECT id FROM alerts")) == 1)
        with TestClient(create_app(services)) as client:
            answer = client.post(
                "/api/interventions",
                json={"action": "lock_account", "target": "user-77", "reason": "confirmed fraud"},
                headers={**bearer(services, Role.OPERATOR, "olga"), "X-Request-ID": "req-kafka"},
            )
        assert answer.status_code == 201
        wait_until(
            lambda: (
                not services.store.rows("SELECT seq FROM audit_log WHERE published = 0")
                and len(services.store.rows("SELECT seq FROM audit_log")) == 2
            )
        )
        assert not feeds.died
    finally:
        feeds.stop()

    published = [msgspec.json.decode(m.value()) for m in read_all(kafka, topics.interventions, max_wait_s=10)]
    assert sorted((r["action"], r["actor"]) for r in published) == [
        ("lock_account", "olga"),
        ("require_step_up", "system:automation"),
    ]
    lock = next(r for r in published if r["action"] == "lock_account")
    assert lock["target"] == "user-77" and lock["after"] == {"account": "locked"} and lock["request_id"] == "req-kafka"
    audit = sorted(
        (msgspec.json.decode(m.value()) for m in read_all(kafka, topics.audit, max_wait_s=10)), key=lambda e: e["seq"]
    )
    stored = services.store.rows("SELECT seq, hash FROM audit_log ORDER BY seq")
    assert [(e["seq"], e["hash"]) for e in audit] == [(r["seq"], r["hash"]) for r in stored]
    assert audit[1]["prev_hash"] == audit[0]["hash"] and audit[1]["actor"] == "olga"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death it provokes
def test_the_probes_report_the_feeds_and_a_feed_thread_that_died_fails_liveness(
    kafka: KafkaConnection, make_topic: Callable[..., str], unique_name: str, tmp_path: Path
) -> None:
    topics = FeedTopics(make_topic("alerts"), make_topic("reports"), make_topic("interventions"), make_topic("audit"))
    services = make_services(f"sqlite:///{tmp_path}/console.db")
    feeds = ConsoleFeeds(kafka, topics, services.store, services.desk, [], unique_name)
    feeds.start()
    try:
        with TestClient(create_app(services, feeds)) as client:
            wait_until(lambda: feeds.assigned.is_set() and feeds.last_contact is not None)
            ready = client.get("/readyz")
            assert ready.status_code == 200
            status = ready.json()["feeds"]
            assert status["running"] and status["partitions_assigned"] and status["kafka_last_contact_s_ago"] < 30
            assert client.get("/healthz").status_code == 200
            # The store goes away (closed: an error no retry mends): not ready at once; the feed thread's next use
            # of the store ends it, and then the console is not live.
            services.store.close()
            assert client.get("/readyz").status_code == 503
            writer = producer(kafka)
            writer.produce(topics.alerts, alert_payload("user-5", "high"), key="user-5")
            assert writer.flush(10) == 0
            wait_until(lambda: feeds.died)
            dead = client.get("/healthz")
            assert dead.status_code == 503 and "feeds stopped" in dead.json()["status"]
    finally:
        feeds.stop()


def test_a_console_without_kafka_stays_ready_and_says_the_brokers_never_answered(
    unique_name: str, tmp_path: Path
) -> None:
    nobody = KafkaConnection(f"127.0.0.1:{free_port()}")  # nothing listens there
    services = make_services(f"sqlite:///{tmp_path}/console.db")
    feeds = ConsoleFeeds(nobody, FeedTopics("a", "r", "i", "audit"), services.store, services.desk, [], unique_name)
    feeds.start()
    try:
        with TestClient(create_app(services, feeds)) as client:
            time.sleep(5)  # longer than one metadata request's timeout
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["feeds"] == {
                "running": True,
                "partitions_assigned": False,
                "kafka_last_contact_s_ago": None,
            }
            assert client.get("/healthz").status_code == 200
    finally:
        feeds.stop()


def test_feeds_on_postgresql_go_on_after_the_server_dropped_the_stores_connection(
    kafka: KafkaConnection, make_topic: Callable[..., str], unique_name: str
) -> None:
    topics = FeedTopics(make_topic("alerts"), make_topic("reports"), make_topic("interventions"), make_topic("audit"))
    writer = producer(kafka)

    def stored_alerts() -> int:
        try:
            return len(services.store.rows("SELECT id FROM alerts"))
        except StoreUnavailable:  # this read may be the one that finds the connection gone
            return -1

    with running_postgres() as url:
        services = make_services(url)
        feeds = ConsoleFeeds(kafka, topics, services.store, services.desk, [], unique_name)
        feeds.start()
        try:
            writer.produce(topics.alerts, alert_payload("user-1", "high", event_id="evt-1"), key="user-1")
            assert writer.flush(10) == 0
            wait_until(lambda: stored_alerts() == 1)
            backend = services.store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"]
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
            writer.produce(topics.alerts, alert_payload("user-2", "high", event_id="evt-2"), key="user-2")
            assert writer.flush(10) == 0
            wait_until(lambda: stored_alerts() == 2)
            assert not feeds.died and services.store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"] != backend
        finally:
            feeds.stop()
            services.store.close()
