"""The console's HTTP API: every endpoint × every role against the permission table, tokens, audit, automation."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from structlog.testing import capture_logs
from typer.testing import CliRunner

from shared import interventions
from shared.artifact_store import RedisArtifactStore
from shared.console_auth import PERMISSIONS, LoginThrottle, Permission, Role, TokenIssuer, UserDirectory
from shared.registry import ModelRegistry
from shared.signing import sign
from shared.training import TrainingResult
from tests.console_support import (
    PASSWORD,
    SIGNING_KEY,
    alert_payload,
    audit_count,
    bearer,
    make_services,
    offline_feeds,
    serving,
    window_alerts_of,
    window_report,
)
from tests.small_models import train_small, train_small_metrics
from workers.cli import app as cli_app
from workers.console import ConsoleServices, create_app

REGISTRY_KEY = b"r" * 32


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    return train_small(events=3_000, seed=5)


@pytest.fixture(scope="module")
def trained_metrics() -> TrainingResult:
    return train_small_metrics()


@pytest.fixture
def services(tmp_path: Path, redis_client: redis.Redis, unique_name: str, trained: TrainingResult) -> ConsoleServices:
    """A console on a fresh SQLite store and registry: v1 deployed then v2 deployed (so a rollback has a target),
    one medium alert of user-1 stored, automation off (its own tests turn it on)."""
    prefix = f"{unique_name}:"
    registry = ModelRegistry(redis_client, RedisArtifactStore(redis_client, prefix), REGISTRY_KEY, prefix)
    registry.publish(trained.bundle, trained.draft, deploy=True)
    registry.publish(trained.bundle, trained.draft, deploy=True)
    built = make_services(f"sqlite:///{tmp_path}/console.db", registry, automation=False)
    offline_feeds(built).ingest([alert_payload("user-1", "medium", event_id="evt-first")])
    return built


@pytest.fixture
def client(services: ConsoleServices) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        yield test_client


def first_alert_id(services: ConsoleServices) -> str:
    return str(services.store.rows("SELECT id FROM alerts ORDER BY seq LIMIT 1")[0]["id"])


REASON = {"reason": "seen in the review"}
# (method, path, JSON body, the permission the endpoint needs); {alert} is the stored alert's id.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, Permission]] = [
    ("GET", "/api/me", None, Permission.READ),
    ("GET", "/api/alerts?severity=medium&detector=iforest&entity=user-1&stream=transactions", None, Permission.READ),
    ("GET", "/api/alerts/top?n=5", None, Permission.READ),
    ("GET", "/api/alerts/{alert}", None, Permission.READ),
    ("GET", "/api/entities/user-1", None, Permission.READ),
    ("GET", "/api/models", None, Permission.READ),
    ("GET", "/api/reports?window_s=60", None, Permission.READ),
    ("GET", "/api/interventions", None, Permission.READ),
    ("GET", "/api/audit", None, Permission.READ_AUDIT),
    ("GET", "/api/audit/verify", None, Permission.READ_AUDIT),
    ("POST", "/api/interventions", {"action": "lock_account", "target": "user-1", **REASON}, Permission.INTERVENE),
    ("POST", "/api/interventions", {"action": "unlock_account", "target": "user-1", **REASON}, Permission.INTERVENE),
    (
        "POST",
        "/api/interventions",
        {"action": "block_transaction", "target": "evt-first", **REASON},
        Permission.INTERVENE,
    ),
    (
        "POST",
        "/api/interventions",
        {"action": "release_transaction", "target": "evt-first", **REASON},
        Permission.INTERVENE,
    ),
    ("POST", "/api/interventions", {"action": "require_step_up", "target": "user-1", **REASON}, Permission.INTERVENE),
    ("POST", "/api/alerts/{alert}/label", {"verdict": "true_positive", **REASON}, Permission.LABEL_ALERTS),
    ("POST", "/api/alerts/{alert}/label", {"verdict": "false_positive", **REASON}, Permission.LABEL_ALERTS),
    ("POST", "/api/models/transactions/promote", {"version": 1, **REASON}, Permission.MANAGE_MODELS),
    ("POST", "/api/models/transactions/rollback", REASON, Permission.MANAGE_MODELS),
    (
        "POST",
        "/api/models/transactions/thresholds",
        {"methods": {"robust_z": "quantile"}, **REASON},
        Permission.MANAGE_MODELS,
    ),
    ("GET", "/api/window-alerts?stream=transactions&limit=10", None, Permission.READ),
]


def call(client: TestClient, services: ConsoleServices, endpoint: tuple[Any, ...], headers: dict[str, str]) -> Any:
    method, path, body, _ = endpoint
    return client.request(method, path.format(alert=first_alert_id(services)), json=body, headers=headers)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    "endpoint", ENDPOINTS, ids=[f"{m} {p.split('?')[0]} {(b or {}).get('action', '')}" for m, p, b, _ in ENDPOINTS]
)
def test_every_endpoint_does_what_the_permission_table_says_for_every_role(
    client: TestClient, services: ConsoleServices, endpoint: tuple[Any, ...], role: Role
) -> None:
    method, _, _, permission = endpoint
    audited_before = audit_count(services.store)
    response = call(client, services, endpoint, bearer(services, role))
    if permission in PERMISSIONS[role]:
        assert response.status_code < 400, response.text
        # every action leaves exactly one audit record; a read leaves none
        assert audit_count(services.store) - audited_before == (1 if method == "POST" else 0)
    else:
        assert response.status_code == 403, response.text
        assert audit_count(services.store) == audited_before


def test_permission_table_grows_with_the_role() -> None:
    ordered = [PERMISSIONS[role] for role in (Role.VIEWER, Role.ANALYST, Role.OPERATOR, Role.ADMIN)]
    assert all(lower < higher for lower, higher in itertools.pairwise(ordered))
    assert PERMISSIONS[Role.ADMIN] == frozenset(Permission)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{m} {p.split('?')[0]}" for m, p, _, _ in ENDPOINTS])
def test_unauthenticated_requests_are_refused(
    client: TestClient, services: ConsoleServices, endpoint: tuple[Any, ...]
) -> None:
    response = call(client, services, endpoint, {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert audit_count(services.store) == 0


def _forged_tokens(services: ConsoleServices) -> dict[str, str]:
    import jwt

    claims = {
        "sub": "mallory",
        "role": "admin",
        "iss": "fleetwatch-console",
        "aud": "fleetwatch-console",
        "iat": 1,
        "exp": 4_000_000_000,
    }
    return {
        "expired": TokenIssuer(SIGNING_KEY, ttl_s=60).issue("ann", Role.ADMIN, now=1_000_000),
        "other key": TokenIssuer(b"x" * 40, ttl_s=60).issue("ann", Role.ADMIN),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "wrong audience": jwt.encode({**claims, "aud": "elsewhere"}, SIGNING_KEY, algorithm="HS256"),
        "unknown role": jwt.encode({**claims, "role": "root"}, SIGNING_KEY, algorithm="HS256"),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize("kind", ["expired", "other key", "alg none", "wrong audience", "unknown role", "garbage"])
def test_expired_and_forged_tokens_are_refused(client: TestClient, services: ConsoleServices, kind: str) -> None:
    token = _forged_tokens(services)[kind]
    for endpoint in (ENDPOINTS[0], ENDPOINTS[10]):
        assert call(client, services, endpoint, {"Authorization": f"Bearer {token}"}).status_code == 401
    assert audit_count(services.store) == 0


def test_login_issues_a_working_token_and_throttles_guessing(client: TestClient, services: ConsoleServices) -> None:
    services.users.put("olga", PASSWORD, Role.OPERATOR)
    answer = client.post("/api/login", json={"username": "olga", "password": PASSWORD})
    assert answer.status_code == 200 and answer.json()["role"] == "operator"
    me = client.get("/api/me", headers={"Authorization": f"Bearer {answer.json()['access_token']}"})
    assert me.json()["username"] == "olga" and "intervene" in me.json()["permissions"]
    stored = services.store.rows("SELECT password_hash FROM console_users WHERE username = 'olga'")[0]
    assert stored["password_hash"].startswith("$argon2id$") and PASSWORD not in stored["password_hash"]
    for _ in range(services.settings.login_max_failures):
        assert client.post("/api/login", json={"username": "olga", "password": "wrong!"}).status_code == 401
    throttled = client.post("/api/login", json={"username": "olga", "password": PASSWORD})
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert client.post("/api/login", json={"username": "nobody", "password": "x"}).status_code == 401


class GatedHasher(PasswordHasher):
    """argon2's hasher that counts the password checks running at once; each waits for `gate` first, so a test
    can keep hash slots taken."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.running = self.peak = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.gate.wait(30)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


def parallel_logins(url: str, logins: list[tuple[str, str]]) -> list[httpx.Response]:
    def log_in(login: tuple[str, str]) -> httpx.Response:
        return httpx.post(f"{url}/api/login", json={"username": login[0], "password": login[1]}, timeout=60)

    with ThreadPoolExecutor(len(logins)) as pool:
        return list(pool.map(log_in, logins))


def test_parallel_logins_run_at_most_two_password_hashes_at_once(
    services: ConsoleServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = GatedHasher()
    monkeypatch.setattr(services.users, "_hasher", hasher)
    with serving(create_app(services)) as url:
        answers = parallel_logins(url, [(f"nobody-{i}", "guess") for i in range(20)])
    assert hasher.peak <= 2  # each argon2id hash takes 64 MiB
    assert {a.status_code for a in answers} <= {401, 503}
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 503)


def test_a_login_finding_every_hash_slot_taken_is_told_to_retry_and_not_counted_as_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(f"sqlite:///{tmp_path}/console.db", login_max_failures=1)
    services.users.put("olga", PASSWORD, Role.OPERATOR)
    hasher = GatedHasher()
    monkeypatch.setattr(services.users, "_hasher", hasher)
    hasher.gate.clear()
    with serving(create_app(services)) as url, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(parallel_logins, url, [(f"nobody-{i}", "guess")]) for i in range(2)]
        while hasher.running < 2:
            time.sleep(0.02)
        busy = httpx.post(f"{url}/api/login", json={"username": "olga", "password": PASSWORD}, timeout=30)
        hasher.gate.set()
        assert [f.result()[0].status_code for f in held] == [401, 401]
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        again = httpx.post(f"{url}/api/login", json={"username": "olga", "password": PASSWORD}, timeout=30)
        assert again.status_code == 200, "the busy answer did not count against olga's one allowed failure"


def test_parallel_guesses_are_counted_before_the_slow_hash_so_only_the_limit_gets_checked(
    services: ConsoleServices,
) -> None:
    services.users = UserDirectory(services.store, concurrent_hashes=8)  # no busy answers: only the throttle counts
    services.users.put("olga", PASSWORD, Role.OPERATOR)
    limit = services.settings.login_max_failures
    with serving(create_app(services)) as url:
        answers = parallel_logins(url, [("olga", f"guess-{i}") for i in range(40)])
        assert Counter(a.status_code for a in answers) == {401: limit, 429: 40 - limit}
        assert parallel_logins(url, [("olga", PASSWORD)])[0].status_code == 429


def test_the_throttle_forgets_pairs_whose_attempts_all_left_the_window() -> None:
    throttle = LoginThrottle(max_failures=5, window_s=300)
    for index in range(1_000):
        throttle.admit(f"user-{index}", "10.0.0.1", now=0.0)
    assert throttle.admit("ann", "10.0.0.2", now=301.0) == 0.0
    assert list(throttle._attempts) == [("ann", "10.0.0.2")]


def test_an_action_is_audited_with_who_what_target_reason_states_and_request_id(
    client: TestClient, services: ConsoleServices
) -> None:
    response = client.post(
        "/api/interventions",
        json={"action": "lock_account", "target": "user-1", "reason": "card testing", "alert_id": "a-1"},
        headers={**bearer(services, Role.OPERATOR, "olga"), "X-Request-ID": "req-42"},
    )
    assert response.status_code == 201 and response.headers["X-Request-ID"] == "req-42"
    [entry] = client.get("/api/audit", headers=bearer(services, Role.ADMIN)).json()
    assert {k: entry[k] for k in ("actor", "action", "target", "reason", "before", "after", "request_id")} == {
        "actor": "olga",
        "action": "lock_account",
        "target": "user-1",
        "reason": "card testing",
        "before": {"account": "unlocked"},
        "after": {"account": "locked"},
        "request_id": "req-42",
    }
    history = client.get("/api/entities/user-1", headers=bearer(services, Role.VIEWER)).json()
    assert history["controls"] == {"account": "locked"} and history["interventions"][0]["actor"] == "olga"


def test_a_modified_audit_record_breaks_the_chain_check(
    client: TestClient, services: ConsoleServices, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    admin = bearer(services, Role.ADMIN)
    for action in ("lock_account", "unlock_account", "lock_account"):
        client.post("/api/interventions", json={"action": action, "target": "user-1", **REASON}, headers=admin)
    assert client.get("/api/audit/verify", headers=admin).json() == {
        "ok": True,
        "checked": 3,
        "first_bad_seq": None,
        "problem": "",
    }
    monkeypatch.setenv("FLEETWATCH_CONSOLE__STORE_URL", f"sqlite:///{tmp_path}/console.db")
    intact = CliRunner().invoke(cli_app, ["console", "verify-audit"])
    assert intact.exit_code == 0, intact.output

    with services.store.transaction() as tx:
        tx.run("UPDATE audit_log SET reason = 'routine' WHERE seq = 2")
    verdict = client.get("/api/audit/verify", headers=admin).json()
    assert verdict["ok"] is False and verdict["first_bad_seq"] == 2 and "modified" in verdict["problem"]
    broken = CliRunner().invoke(cli_app, ["console", "verify-audit"])
    assert broken.exit_code == 1 and "BROKEN at record 2" in broken.output


def test_a_deleted_audit_record_breaks_the_chain_check(client: TestClient, services: ConsoleServices) -> None:
    admin = bearer(services, Role.ADMIN)
    for action in ("lock_account", "unlock_account", "lock_account"):
        client.post("/api/interventions", json={"action": action, "target": "user-1", **REASON}, headers=admin)
    with services.store.transaction() as tx:
        tx.run("DELETE FROM audit_log WHERE seq = 2")
    verdict = client.get("/api/audit/verify", headers=admin).json()
    assert verdict["ok"] is False and verdict["first_bad_seq"] == 3


def test_model_actions_move_the_registry_and_show_every_threshold_method(
    client: TestClient, services: ConsoleServices
) -> None:
    admin = bearer(services, Role.ADMIN)
    [stream] = client.get("/api/models", headers=admin).json()
    assert stream["deployed"] == 2 and [v["version"] for v in stream["versions"]] == [1, 2]
    detector = stream["versions"][1]["detectors"][0]
    assert set(detector["thresholds"]) == set(stream["methods"]) and detector["active_method"] == "fleet_budget"

    rolled = client.post("/api/models/transactions/rollback", json=REASON, headers=admin).json()
    assert rolled["before"] == {"deployed": 2} and rolled["after"] == {"deployed": 1}
    changed = client.post(
        "/api/models/transactions/thresholds", json={"methods": {"robust_z": "quantile"}, **REASON}, headers=admin
    ).json()
    assert changed["after"]["version"] == 3 and changed["after"]["deployed"] == 3
    assert changed["after"]["methods"]["robust_z"] == "quantile"
    refused = client.post("/api/models/transactions/promote", json={"version": 99, **REASON}, headers=admin)
    assert refused.status_code == 409 and "does not exist" in refused.json()["detail"]
    unknown = client.post(
        "/api/models/transactions/thresholds", json={"methods": {"nope": "quantile"}, **REASON}, headers=admin
    )
    assert unknown.status_code == 409
    assert audit_count(services.store) == 2  # refused actions changed nothing and left no record


def test_a_rollback_from_a_version_no_longer_deployed_is_refused_so_a_retry_does_not_roll_back_twice(
    client: TestClient, services: ConsoleServices, trained: TrainingResult
) -> None:
    assert services.registry is not None
    services.registry.publish(trained.bundle, trained.draft, deploy=True)  # v3: two versions to go back to
    admin = bearer(services, Role.ADMIN)
    body = {"from_version": 3, **REASON}
    first = client.post("/api/models/transactions/rollback", json=body, headers=admin)
    assert first.status_code == 201 and first.json()["after"] == {"deployed": 2}
    retry = client.post("/api/models/transactions/rollback", json=body, headers=admin)
    assert retry.status_code == 409 and "deploys v2, not v3" in retry.json()["detail"]
    assert services.registry.deployed_version("transactions") == 2 and audit_count(services.store) == 1


def history_of(registry: ModelRegistry, client: redis.Redis) -> list[int]:
    return [int(v) for v in client.lrange(registry.keys.history("transactions"), 0, -1)]


def a_store_that_fails_to_keep_interventions(monkeypatch: pytest.MonkeyPatch, meanwhile: Any = None) -> None:
    """The store's transaction failing where it keeps the intervention (a lost disk or server), after `meanwhile`
    (another change of the registry) when given; the transaction rolls back."""

    def fail(*_: object) -> None:
        if meanwhile is not None:
            meanwhile()
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(interventions, "_insert", fail)


def model_action(services: ConsoleServices, action: str, body: dict[str, Any]) -> httpx.Response:
    client = TestClient(create_app(services), raise_server_exceptions=False)
    return client.post(
        f"/api/models/transactions/{action}", json={**body, **REASON}, headers=bearer(services, Role.ADMIN)
    )


@pytest.mark.parametrize(
    ("action", "body", "published"),
    [
        ("promote", {"version": 1}, [1, 2]),
        ("rollback", {"from_version": 2}, [1, 2]),
        ("thresholds", {"methods": {"robust_z": "quantile"}}, [1, 2, 3]),  # v3 derived and deployed, then undone
    ],
)
def test_a_model_action_the_store_fails_to_record_is_undone_so_no_change_stands_without_its_audit_record(
    services: ConsoleServices,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    body: dict[str, Any],
    published: list[int],
) -> None:
    registry = services.registry
    assert registry is not None and history_of(registry, redis_client) == [1, 2]
    a_store_that_fails_to_keep_interventions(monkeypatch)
    with capture_logs() as logs:
        answer = model_action(services, action, body)
    assert registry.deployed_version("transactions") == 2 and history_of(registry, redis_client) == [1, 2]
    assert [entry.version for entry in registry.versions("transactions")] == published, "derived stays published"
    assert audit_count(services.store) == 0 and services.store.rows("SELECT id FROM interventions") == []
    assert answer.status_code == 500 and answer.json()["undone"] is True
    assert "the change was undone" in answer.json()["detail"] and "disk I/O" not in answer.json()["detail"]
    [logged] = [entry for entry in logs if entry["event"] == "model action not recorded: the store failed"]
    assert logged["undone"] is True and logged["error"] == "OperationalError: disk I/O error"
    assert logged["before"]["deployed"] == 2 and logged["request_id"] == answer.headers["X-Request-ID"]


def test_a_deploy_made_while_the_store_fails_to_record_a_promote_stays_and_the_answer_says_so(
    services: ConsoleServices, trained: TrainingResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = services.registry
    assert registry is not None
    a_store_that_fails_to_keep_interventions(
        monkeypatch,
        meanwhile=lambda: registry.publish(trained.bundle, trained.draft, deploy=True),  # v3, a trainer's
    )
    answer = model_action(services, "promote", {"version": 1})
    assert registry.deployed_version("transactions") == 3, "the trainer's deploy is not overwritten"
    assert answer.status_code == 500 and answer.json()["undone"] is False
    assert "NOT undone: another deploy replaced it since" in answer.json()["detail"]


def test_a_change_the_registry_fails_to_undo_is_answered_as_standing(
    services: ConsoleServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = services.registry
    assert registry is not None
    a_store_that_fails_to_keep_interventions(monkeypatch)

    def down(*_: object) -> bool:
        raise redis.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(registry, "move_back", down)
    with capture_logs() as logs:
        answer = model_action(services, "promote", {"version": 1})
    assert answer.status_code == 500 and answer.json()["undone"] is False
    assert "NOT undone: the registry did not answer" in answer.json()["detail"]
    [logged] = [entry for entry in logs if entry["event"] == "model action not recorded: the store failed"]
    assert "Connection refused" in logged["undo_error"] and logged["after"] == {"deployed": 1}


def test_versions_that_do_not_verify_are_listed_as_refused_and_promoting_one_is_refused(
    client: TestClient, services: ConsoleServices, redis_client: redis.Redis, trained: TrainingResult
) -> None:
    registry = services.registry
    assert registry is not None
    for _ in (3, 4):
        registry.publish(trained.bundle, trained.draft, deploy=False)
    redis_client.hdel(registry.keys.manifest("transactions", 3), "signature")
    unreadable = b'{"stream": "transactions"}'  # signed with the registry's key, by a build of another schema
    redis_client.hset(
        registry.keys.manifest("transactions", 4),
        mapping={"body": unreadable, "signature": sign(REGISTRY_KEY, unreadable)},
    )
    rotated_out = ModelRegistry(
        redis_client, RedisArtifactStore(redis_client, registry.keys.prefix), b"o" * 32, registry.keys.prefix
    )
    rotated_out.publish(trained.bundle, trained.draft, deploy=True)  # v5, deployed, signed with a key rotated out
    admin = bearer(services, Role.ADMIN)
    [stream] = client.get("/api/models", headers=admin).json()
    assert stream["deployed"] == 5
    assert [(v["version"], v["deployed"], v["refused"]) for v in stream["versions"]] == [
        (1, False, None),
        (2, False, None),
        (3, False, "transactions v3: the manifest has no signature"),
        (
            4,
            False,
            "transactions v4: the manifest does not decode in this build (Object missing required field `version`)",
        ),
        (5, True, "transactions v5: the manifest's signature does not match (tampered or another key)"),
    ]
    for version in (3, 4):
        refused = client.post("/api/models/transactions/promote", json={"version": version, **REASON}, headers=admin)
        assert refused.status_code == 409 and f"v{version}:" in refused.json()["detail"]
    derive = client.post("/api/models/transactions/thresholds", json={"methods": {}, **REASON}, headers=admin)
    assert derive.status_code == 409 and "v5" in derive.json()["detail"]
    assert registry.deployed_version("transactions") == 5 and audit_count(services.store) == 0


def test_models_give_each_threshold_methods_false_positive_rate_and_recall_on_the_test_part(
    client: TestClient, services: ConsoleServices, trained: TrainingResult, trained_metrics: TrainingResult
) -> None:
    assert services.registry is not None
    assert trained.draft.evaluation is not None and trained_metrics.draft.evaluation is not None
    services.registry.publish(trained.bundle, msgspec.structs.replace(trained.draft, evaluation=None), deploy=False)
    services.registry.publish(trained_metrics.bundle, trained_metrics.draft, deploy=True)
    assert services.streams == ["transactions"], "metrics is listed for its published version, not by configuration"
    admin = bearer(services, Role.ADMIN)
    body = {"methods": {"robust_z": "quantile"}, **REASON}
    assert client.post("/api/models/transactions/thresholds", json=body, headers=admin).status_code == 201

    streams = {s["stream"]: s for s in client.get("/api/models", headers=admin).json()}
    deployed, unlabelled, derived = streams["transactions"]["versions"][1:]
    rates = {d["name"]: d["rates"] for d in deployed["detectors"]}
    assert rates == trained.draft.evaluation["threshold_methods"]
    assert all(set(methods) == set(streams["transactions"]["methods"]) for methods in rates.values())
    assert set(rates["robust_z"]["quantile"]) == {"fpr", "recall"}
    assert all(d["rates"] == {} for d in unlabelled["detectors"]), "trained without labels: nothing measured"
    assert derived["parent_version"] == 2
    assert {d["name"]: d["rates"] for d in derived["detectors"]} == rates, "other active methods, same rates"
    [metrics] = streams["metrics"]["versions"]
    assert {d["name"]: d["rates"] for d in metrics["detectors"]} == trained_metrics.draft.evaluation[
        "threshold_methods"
    ]
    derived = client.post(
        "/api/models/metrics/thresholds", json={"methods": {"aakr": "quantile"}, **REASON}, headers=admin
    )
    assert derived.status_code == 201 and derived.json()["after"]["methods"]["aakr"] == "quantile"
    unknown = client.post("/api/models/logs/rollback", json=REASON, headers=admin)
    assert (
        unknown.status_code == 409
        and "unknown stream 'logs'; streams: metrics, transactions" in unknown.json()["detail"]
    )


def test_labels_reach_the_trainers_labels_format(
    client: TestClient, services: ConsoleServices, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.event_files import read_labels

    alert = first_alert_id(services)
    analyst = bearer(services, Role.ANALYST)
    client.post(f"/api/alerts/{alert}/label", json={"verdict": "false_positive", **REASON}, headers=analyst)
    second = client.post(f"/api/alerts/{alert}/label", json={"verdict": "true_positive", **REASON}, headers=analyst)
    assert second.json()["before"] == {"label": "false_positive"}
    assert client.get(f"/api/alerts/{alert}", headers=analyst).json()["label"]["verdict"] == "true_positive"
    base = tmp_path / "day.labels.jsonl"
    base.write_text(
        '{"event_id": "evt-first", "is_anomaly": false, "anomaly_kind": ""}\n'
        '{"event_id": "evt-other", "is_anomaly": false, "anomaly_kind": ""}\n'
    )
    monkeypatch.setenv("FLEETWATCH_CONSOLE__STORE_URL", f"sqlite:///{tmp_path}/console.db")
    out = tmp_path / "merged.labels.jsonl"
    result = CliRunner().invoke(cli_app, ["console", "export-labels", str(out), "--base", str(base)])
    assert result.exit_code == 0, result.output
    assert read_labels(out) == {"evt-first": (True, "analyst_confirmed"), "evt-other": (False, "")}


def test_unknown_alert_is_not_found_and_labelling_it_is_refused(client: TestClient, services: ConsoleServices) -> None:
    admin = bearer(services, Role.ADMIN)
    assert client.get("/api/alerts/nope", headers=admin).status_code == 404
    response = client.post("/api/alerts/nope/label", json={"verdict": "true_positive", **REASON}, headers=admin)
    assert response.status_code == 409 and audit_count(services.store) == 0


def test_alert_filters_top_n_and_polling(client: TestClient, services: ConsoleServices) -> None:
    feeds = offline_feeds(services)
    feeds.ingest([alert_payload("user-2", "high"), alert_payload("user-3", "low"), alert_payload("user-2", "medium")])
    viewer = bearer(services, Role.VIEWER)
    everything = client.get("/api/alerts", headers=viewer).json()
    assert [a["entity"] for a in everything] == ["user-2", "user-3", "user-2", "user-1"]
    assert [a["severity"] for a in client.get("/api/alerts/top?n=2", headers=viewer).json()] == ["high", "medium"]
    assert len(client.get("/api/alerts?entity=user-2", headers=viewer).json()) == 2
    assert [a["entity"] for a in client.get("/api/alerts?detector=robust_z", headers=viewer).json()] == ["user-2"]
    newest_seq = everything[1]["seq"]
    assert [a["entity"] for a in client.get(f"/api/alerts?after={newest_seq}", headers=viewer).json()] == ["user-2"]
    report = client.get(f"/api/alerts/{everything[0]['id']}", headers=viewer).json()["report"]
    assert report["detectors"][0]["threshold"] == -0.55 and report["standout_features"][0]["name"] == "amount_z"


def test_polling_after_a_burst_larger_than_a_page_reads_every_alert_in_order(
    client: TestClient, services: ConsoleServices
) -> None:
    viewer = bearer(services, Role.VIEWER)
    [shown] = client.get("/api/alerts?limit=200", headers=viewer).json()  # the page's first load: newest first
    offline_feeds(services).ingest([alert_payload(f"burst-{i}") for i in range(450)])
    polled, last_seq = [], shown["seq"]
    while page := client.get(f"/api/alerts?after={last_seq}&limit=200", headers=viewer).json():
        polled += page
        last_seq = page[-1]["seq"]
    assert [a["entity"] for a in polled] == [f"burst-{i}" for i in range(450)]  # none skipped, oldest first
    assert [a["seq"] for a in polled] == list(range(shown["seq"] + 1, shown["seq"] + 451))


def test_window_reports_give_the_anomaly_rate_series(client: TestClient, services: ConsoleServices) -> None:

    records = [
        window_report("2026-11-30T08:00:00+00:00", "a", 100, 1),
        window_report("2026-11-30T08:00:00+00:00", "b", 100, 3),
        window_report("2026-11-30T08:01:00+00:00", "a", 50, 0),
    ]
    offline_feeds(services).ingest([*records, records[0]])  # a repeated report counts once
    series = client.get("/api/reports?window_s=60", headers=bearer(services, Role.VIEWER)).json()
    assert [(r["window_start"][11:16], r["scored"], r["anomaly_rate"]) for r in series] == [
        ("08:00", 200, 0.02),
        ("08:01", 50, 0.0),
    ]


def test_rate_alerts_and_escalations_are_kept_once_and_listed_newest_first(
    client: TestClient, services: ConsoleServices
) -> None:
    rate, escalation = window_alerts_of(1_795_999_980.0)
    later_rate, _ = window_alerts_of(1_796_000_040.0)
    feeds = offline_feeds(services)
    feeds.ingest([rate, escalation])
    feeds.ingest([escalation, later_rate])  # the topic read again: the repeat is dropped
    viewer = bearer(services, Role.VIEWER)
    listed = client.get("/api/window-alerts", headers=viewer).json()
    assert [(a["type"], a["window_start"][11:16], a.get("entity")) for a in listed] == [
        ("rate_alert", "00:54", None),
        ("entity_escalation", "00:53", "user-4711"),
        ("rate_alert", "00:53", None),
    ]
    assert listed[2]["criteria"] == ["absolute", "relative"] and listed[2]["top_entities"][0] == ["user-4711", 9]
    assert client.get("/api/window-alerts?stream=logs", headers=viewer).json() == []
    assert len(client.get("/api/window-alerts?limit=1", headers=viewer).json()) == 1
    assert client.get("/api/alerts", headers=viewer).json()[0]["entity"] == "user-1", "not among event alerts"


def test_window_records_without_the_fields_the_console_reads_are_skipped(
    client: TestClient, services: ConsoleServices
) -> None:
    rate, escalation = (msgspec.json.decode(record) for record in window_alerts_of(1_795_999_980.0))
    report = msgspec.json.decode(window_report("2026-11-30T08:00:00+00:00", "a", 100, 1))
    broken = [
        {**rate, "stream": None},  # a NOT NULL column: it would fail the store's transaction
        {key: value for key, value in escalation.items() if key != "raised_at"},  # the page shows it
        {**escalation, "window_s": [60]},
        {**report, "window_start": None},
        {**report, "alerts": {}},
    ]
    feeds = offline_feeds(services)
    feeds.ingest([msgspec.json.encode(record) for record in broken] + [window_alerts_of(1_795_999_980.0)[0]])
    viewer = bearer(services, Role.VIEWER)
    assert [a["type"] for a in client.get("/api/window-alerts", headers=viewer).json()] == ["rate_alert"]
    assert client.get("/api/reports", headers=viewer).json() == []


def test_automation_acts_once_per_alert_and_a_replay_does_not_act_again(tmp_path: Path) -> None:
    services = make_services(f"sqlite:///{tmp_path}/c.db", None, lock_after_alerts=3, lock_window_s=3600)
    feeds = offline_feeds(services)
    high = alert_payload("user-9", "high")
    burst = [alert_payload("user-7", "medium") for _ in range(4)]
    feeds.ingest([high, *burst])
    feeds.ingest([high, *burst])  # the topic read again
    rows = services.store.rows("SELECT action, target, actor, idempotency_key FROM interventions ORDER BY seq")
    assert [(r["action"], r["target"], r["actor"]) for r in rows] == [
        ("require_step_up", "user-9", "system:automation"),
        ("lock_account", "user-7", "system:automation"),  # at the third alert; the fourth finds it locked
    ]
    assert all(r["idempotency_key"].startswith("rule:") for r in rows)
    assert audit_count(services.store) == 2

    # the same rule and alert through the desk directly: the first outcome, not a second action
    from shared.alert_inbox import alert_report
    from shared.automation_rules import run_rules

    alert = alert_report(services.store, services.store.rows("SELECT id FROM alerts WHERE entity = 'user-9'")[0]["id"])
    assert alert is not None
    [again] = run_rules(services.automation_rules(), services.desk, services.store, alert)
    assert again.applied is False and audit_count(services.store) == 2


def test_an_action_needs_a_reason(client: TestClient, services: ConsoleServices) -> None:
    response = client.post(
        "/api/interventions",
        json={"action": "lock_account", "target": "user-1", "reason": "   "},
        headers=bearer(services, Role.ADMIN),
    )
    assert response.status_code == 422 and audit_count(services.store) == 0


def test_a_model_action_whose_reason_holds_a_nul_character_is_refused_before_the_registry_moves(
    client: TestClient, services: ConsoleServices
) -> None:
    assert services.registry is not None
    answer = client.post(
        "/api/models/transactions/rollback", json={"reason": "bad\x00"}, headers=bearer(services, Role.ADMIN)
    )
    assert answer.status_code == 422 and services.registry.deployed_version("transactions") == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"action": "lock_account", "target": "user-1", "reason": "\\ud800"}',
        b'{"action": "nope", "target": "\\ud800", "reason": "x"}',
    ],
)
def test_a_lone_surrogate_in_json_is_refused_as_unprocessable(services: ConsoleServices, body: bytes) -> None:
    client = TestClient(create_app(services), raise_server_exceptions=False)
    headers = {**bearer(services, Role.ADMIN), "Content-Type": "application/json"}
    answer = client.post("/api/interventions", content=body, headers=headers)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][0] == "body"
    login = client.post("/api/login", content=b'{"username": "\\ud800", "password": "x"}', headers=headers)
    assert login.status_code == 422


def test_probes_and_metrics_need_no_token(client: TestClient, services: ConsoleServices) -> None:
    client.post("/api/login", json={"username": "nobody", "password": "wrong"})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "feeds": None}  # no feeds beside this app
    assert 'fleetwatch_console_logins_total{result="refused"}' in client.get("/metrics").text


def test_a_console_whose_store_does_not_answer_is_not_ready_but_stays_live(
    client: TestClient, services: ConsoleServices
) -> None:
    services.store.close()
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["status"] == "the console store does not answer (see the log)"
    assert client.get("/healthz").status_code == 200


def test_add_user_stores_an_argon2_hash_and_the_user_can_log_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/users.db"
    monkeypatch.setenv("FLEETWATCH_CONSOLE__STORE_URL", url)
    result = CliRunner().invoke(
        cli_app, ["console", "add-user", "ann", "--role", "analyst", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    services = make_services(url)
    assert services.users.authenticate("ann", PASSWORD).role is Role.ANALYST
    bad = CliRunner().invoke(cli_app, ["console", "add-user", "bob", "--role", "root", "--password-stdin"], input="x\n")
    assert bad.exit_code != 0
