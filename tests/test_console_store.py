"""The console store on both databases: SQLite (a file) and PostgreSQL (Debian's server, started here).

The same flows on each: interventions with their audit chain, a tampered record found, automation
that a replay does not repeat, labels, alerts stored once. The PostgreSQL server must start: if it
cannot, these tests fail, they do not skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared import audit_log
from shared.console_store import ConsoleStore, StoreUnavailable
from shared.interventions import Action, InterventionRequest, labels_for_trainer
from tests.console_support import alert_payload, audit_count, make_services, offline_feeds
from tests.postgres_server import running_postgres


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/console.db"
    server: str = request.getfixturevalue("postgres_url")
    database = f"console_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")  # one database per test: no shared state
    return server.rsplit("/", 1)[0] + f"/{database}"


def test_a_postgresql_store_reconnects_after_the_server_dropped_its_connection(postgres_url: str) -> None:
    store = ConsoleStore.open(postgres_url)
    with store.transaction() as tx:
        tx.run("INSERT INTO console_users VALUES (?, ?, ?, ?)", ("ann", "hash", "analyst", "2026-12-02T00:00:00Z"))
    backend = store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    with pytest.raises(StoreUnavailable, match="connection was lost"):
        store.rows("SELECT 1")  # the statement that finds the connection gone fails
    assert store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"] != backend
    assert store.rows("SELECT username FROM console_users") == [{"username": "ann"}]
    store.close()


def lock(target: str, actor: str = "olga", reason: str = "review") -> InterventionRequest:
    return InterventionRequest(action=Action.LOCK_ACCOUNT, target=target, reason=reason, actor=actor, request_id="r")


def test_actions_chain_their_audit_records_and_tampering_is_found(store_url: str) -> None:
    services = make_services(store_url)
    for index in range(5):
        services.desk.apply(lock(f"user-{index}"))
    assert audit_log.verify_store(services.store) == audit_log.ChainVerdict(ok=True, checked=5)
    with services.store.transaction() as tx:
        tx.run("UPDATE audit_log SET after_state = ? WHERE seq = 4", ('{"account":"unlocked"}',))
    verdict = audit_log.verify_store(services.store)
    assert not verdict.ok and verdict.first_bad_seq == 4 and verdict.checked == 3


def test_state_before_and_after_follow_the_controls(store_url: str) -> None:
    services = make_services(store_url)
    first = services.desk.apply(lock("user-1")).record
    second = services.desk.apply(lock("user-1")).record
    released = services.desk.apply(
        InterventionRequest(action=Action.UNLOCK_ACCOUNT, target="user-1", reason="ok", actor="ann", request_id="r2")
    ).record
    assert (first.before, first.after) == ({"account": "unlocked"}, {"account": "locked"})
    assert second.before == {"account": "locked"}
    assert released.after == {"account": "unlocked"} and audit_count(services.store) == 3


def test_alerts_are_stored_once_and_replayed_automation_does_not_act_twice(store_url: str) -> None:
    services = make_services(store_url, lock_after_alerts=2)
    feeds = offline_feeds(services)
    batch = [alert_payload("user-5", "high"), alert_payload("user-6", "low"), alert_payload("user-6", "low")]
    assert len(feeds.ingest(batch)) == 3
    assert feeds.ingest(batch) == []
    actions = services.store.rows("SELECT action, target FROM interventions ORDER BY seq")
    assert [(a["action"], a["target"]) for a in actions] == [
        ("require_step_up", "user-5"),
        ("lock_account", "user-6"),
    ]
    assert audit_log.verify_store(services.store).checked == 2


def test_labels_and_idempotent_requests(store_url: str) -> None:
    services = make_services(store_url)
    [alert_id] = offline_feeds(services).ingest([alert_payload("user-1", event_id="evt-9")])
    label = InterventionRequest(
        action=Action.LABEL_FALSE_POSITIVE,
        target=alert_id,
        reason="known merchant",
        actor="ann",
        request_id="r",
        idempotency_key="label-once",
    )
    assert services.desk.apply(label).applied and not services.desk.apply(label).applied
    assert labels_for_trainer(services.store) == [{"event_id": "evt-9", "is_anomaly": False, "anomaly_kind": ""}]
    assert audit_count(services.store) == 1
