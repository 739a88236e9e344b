"""The console store on both databases: SQLite (a file) and PostgreSQL (Debian's server, started here).

The same flows on each: interventions with their audit chain, a tampered record found, automation
that a replay does not repeat, labels, alerts stored once. The PostgreSQL server must start: if it
cannot, these tests fail, they do not skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from fastapi.testclient import TestClient

from shared import audit_log
from shared.console_auth import Role
from shared.console_store import ConsoleStore, StoreUnavailable
from shared.interventions import Action, InterventionRequest, Outcome, labels_for_trainer
from tests.console_support import alert_payload, audit_count, bearer, make_services, offline_feeds
from tests.postgres_server import running_postgres
from workers.console import ConsoleServices, create_app


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/console.db"
    return new_database(request.getfixturevalue("postgres_url"))


def new_database(server: str) -> str:
    """A database of its own on the server (one per test: no shared state); its URL."""
    database = f"console_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    return server.rsplit("/", 1)[0] + f"/{database}"


def drop_connection(store: ConsoleStore, server: str) -> None:
    """The server ends the store's connection (as a restart or a failover does)."""
    backend = store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))


def test_a_postgresql_store_reconnects_after_the_server_dropped_its_connection(postgres_url: str) -> None:
    store = ConsoleStore.open(postgres_url)
    with store.transaction() as tx:
        tx.run("INSERT INTO console_users VALUES (?, ?, ?, ?)", ("ann", "hash", "analyst", "2026-12-02T00:00:00Z"))
    backend = store.rows("SELECT pg_backend_pid() AS pid")[0]["pid"]
    drop_connection(store, postgres_url)
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


def test_an_alert_is_filed_under_the_entity_its_record_names(store_url: str) -> None:
    """A log line's session is the worker's (a block id in its text), not the raw `session_id` it lacks."""
    services = make_services(store_url)
    record = msgspec.json.decode(alert_payload("user-7"))
    line = {"event_id": "l1", "timestamp": "2026-11-30T08:00:00+00:00", "source_host": "dn-1", "session_id": None,
            "message": "Deleting block blk_7"}  # fmt: skip
    batch = [
        msgspec.json.encode({**record, "stream": "logs", "event": line, "entity": "blk_7"}),
        alert_payload("user-8"),
    ]
    offline_feeds(services).ingest(batch)
    stored = services.store.rows("SELECT stream, entity FROM alerts ORDER BY seq")
    assert [(row["stream"], row["entity"]) for row in stored] == [("logs", "blk_7"), ("transactions", "user-8")]


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


def malformed_alerts() -> list[bytes]:
    """Alert records each with one field the console reads missing, null or of another type."""
    good = msgspec.json.decode(alert_payload("user-9", "high"))
    broken = [
        {**good, "detected_at": None},  # a NOT NULL column: it failed the whole batch's transaction
        {**good, "severity": None},
        {**good, "severity": 3},  # PostgreSQL: an integer for a text column
        {**good, "stream": None},
        {**good, "event": "oops"},  # the entity is read from the event
        {**good, "detected_at": "not-a-date"},  # the burst rule compares times
        {**good, "detected_at": "2026-11-30T08:00:00"},  # no zone: not comparable with the others
        {**good, "detectors": [{"name": "iforest"}]},  # the page shows each detector's score and threshold
        {key: value for key, value in good.items() if key != "source"},  # the id is made of it
    ]
    return [msgspec.json.encode(record) for record in broken]


def test_malformed_alert_records_are_skipped_and_the_rest_of_the_batch_is_stored_and_acted_on(
    store_url: str,
) -> None:
    services = make_services(store_url)
    batch = [alert_payload("user-1", "high"), *malformed_alerts(), alert_payload("user-2", "high")]
    assert len(offline_feeds(services).ingest(batch)) == 2
    assert [r["entity"] for r in services.store.rows("SELECT entity FROM alerts ORDER BY seq")] == ["user-1", "user-2"]
    actions = services.store.rows("SELECT action, target FROM interventions ORDER BY seq")
    assert [(a["action"], a["target"]) for a in actions] == [
        ("require_step_up", "user-1"),
        ("require_step_up", "user-2"),
    ]


def step_ups(services: ConsoleServices) -> list[str]:
    rows = services.store.rows("SELECT target FROM interventions WHERE action = 'require_step_up' ORDER BY seq")
    return [row["target"] for row in rows]


def test_rules_cut_short_by_a_dropped_store_connection_run_once_when_the_batch_is_read_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(new_database(postgres_url))
    feeds = offline_feeds(services)
    apply = services.desk.apply

    def drop_connection_first(request: InterventionRequest) -> Outcome:
        monkeypatch.setattr(services.desk, "apply", apply)  # once
        drop_connection(services.store, postgres_url)
        return apply(request)

    monkeypatch.setattr(services.desk, "apply", drop_connection_first)
    batch = [alert_payload("user-1", "high"), alert_payload("user-2", "high")]
    with pytest.raises(StoreUnavailable):
        feeds.ingest(batch)  # the alerts were stored; the first rule's action found the connection gone
    assert len(services.store.rows("SELECT id FROM alerts")) == 2 and step_ups(services) == []
    assert feeds.ingest(batch) == []  # the batch read again (the feeds rewind): stored before, rules still due
    assert step_ups(services) == ["user-1", "user-2"]
    feeds.ingest(batch)
    assert step_ups(services) == ["user-1", "user-2"] and audit_count(services.store) == 2


@dataclass(frozen=True)
class FailingRule:
    """A rule with a bug that shows on one entity's alerts."""

    name: str = "failing"
    action: Action = Action.LOCK_ACCOUNT

    def reason(self, alert: dict[str, Any], store: ConsoleStore) -> str | None:
        if alert["entity"] == "user-odd":
            raise RuntimeError("a bug in a rule")
        return None


def test_a_rule_failing_on_one_alert_leaves_the_other_rules_and_later_alerts_acted_on(store_url: str) -> None:
    services = make_services(store_url)
    feeds = offline_feeds(services)
    feeds.rules = [FailingRule(), *feeds.rules]  # type: ignore[list-item]
    feeds.ingest([alert_payload("user-odd", "high"), alert_payload("user-2", "high")])
    assert step_ups(services) == ["user-odd", "user-2"]
    assert services.store.rows("SELECT alert_id FROM alerts_awaiting_rules") == []


NUL_REQUESTS = [
    ("POST", "/api/interventions", {"action": "lock_account", "target": "user-1", "reason": "bad\x00reason"}),
    ("GET", "/api/alerts/a%00b", None),
    ("GET", "/api/alerts?entity=a%00b", None),
    ("GET", "/api/entities/a%00b", None),
    ("GET", "/api/window-alerts?stream=a%00b", None),
    ("GET", "/api/interventions?target=a%00b", None),
    ("POST", "/api/alerts/a%00b/label", {"verdict": "true_positive", "reason": "seen"}),
    ("POST", "/api/login", {"username": "olga\x00", "password": "correct horse"}),
]


@pytest.mark.parametrize("request_", NUL_REQUESTS, ids=[f"{m} {p}" for m, p, _ in NUL_REQUESTS])
def test_text_with_a_nul_character_is_refused_as_unprocessable_on_both_databases(
    store_url: str, request_: tuple[str, str, dict[str, Any] | None]
) -> None:
    services = make_services(store_url)
    client = TestClient(create_app(services), raise_server_exceptions=False)
    method, path, body = request_
    answer = client.request(method, path, json=body, headers=bearer(services, Role.ADMIN))
    assert answer.status_code == 422, answer.text  # PostgreSQL's text cannot hold NUL: it was a 500 there
    assert audit_count(services.store) == 0
    fine = {"action": "lock_account", "target": "user-1", "reason": "fine"}
    assert client.post("/api/interventions", json=fine, headers=bearer(services, Role.ADMIN)).status_code == 201


def test_removing_the_newest_audit_records_is_found_against_the_interventions(store_url: str) -> None:
    services = make_services(store_url)
    for index in range(3):
        services.desk.apply(lock(f"user-{index}"))
    with services.store.transaction() as tx:
        tx.run("DELETE FROM audit_log WHERE seq >= 2")  # the chain left (record 1) is intact
    verdict = audit_log.verify_store(services.store)
    assert not verdict.ok and verdict.checked == 1 and verdict.first_bad_seq == 2
    assert verdict.problem == "3 interventions but 1 audit records: records 2 to 3 were removed"
