"""What the console's tests share: alert records as the workers write them, services on a store, tokens."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import uvicorn
from fastapi import FastAPI

from shared.config import ConsoleSettings
from shared.console_auth import LoginThrottle, Role, TokenIssuer, UserDirectory
from shared.console_store import ConsoleStore
from shared.kafka_client import KafkaConnection
from shared.local_infra.processes import free_port
from shared.registry import ModelRegistry
from shared.windows import WindowSpec, iso, rate_verdict
from workers.console import ConsoleServices
from workers.console_feeds import ConsoleFeeds, FeedTopics

SIGNING_KEY = b"console-test-key-" + b"k" * 32
PASSWORD = "correct horse battery"
_offsets = itertools.count()


def alert_payload(
    user: str = "user-1",
    severity: str = "medium",
    event_id: str | None = None,
    detected_at: str | None = None,
    stream: str = "transactions",
) -> bytes:
    """One alert record in the shape of `shared.output_records.AlertRecord` (a fresh source offset each call)."""
    offset = next(_offsets)
    event = {
        "event_id": event_id or f"evt-{offset}",
        "user_id": user,
        "segment": "loose-passive",
        "amount": 4200.0,
        "currency": "EUR",
        "timestamp": "2026-11-30T08:00:00+00:00",
        "transaction_type": "transfer",
        "channel": "web",
        "ip": "10.0.0.1",
        "counterparty": "cp-1",
    }
    record: dict[str, Any] = {
        "type": "alert",
        "stream": stream,
        "model_version": 1,
        "severity": severity,
        "severity_score": {"low": 0.2, "medium": 0.5, "high": 1.0}[severity],
        "fired": ["iforest"] if severity != "high" else ["iforest", "robust_z"],
        "detectors": [
            {"name": "iforest", "score": -0.61, "threshold": -0.55, "verdict": -1, "mode": "alerting"},
            {
                "name": "robust_z",
                "score": -3.2,
                "threshold": -2.5,
                "verdict": -1 if severity == "high" else 1,
                "mode": "alerting",
            },
        ],
        "standout_features": [{"name": "amount_z", "value": 4200.0, "z": 7.5}],
        "source": {"topic": "events.transactions", "partition": 0, "offset": offset},
        "detected_at": detected_at or datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": event,
    }
    return msgspec.json.encode(record)


def make_services(store_url: str, registry: ModelRegistry | None = None, **settings: Any) -> ConsoleServices:
    console = ConsoleSettings(store_url=store_url, **settings)
    store = ConsoleStore.open(store_url)
    return ConsoleServices(
        settings=console,
        streams=["transactions"],
        store=store,
        users=UserDirectory(store),
        issuer=TokenIssuer(SIGNING_KEY, console.token_ttl_s),
        throttle=LoginThrottle(console.login_max_failures, console.login_window_s),
        registry=registry,
    )


def offline_feeds(services: ConsoleServices) -> ConsoleFeeds:
    """The feeds' ingest path without a broker (never started)."""
    return ConsoleFeeds(
        connection=KafkaConnection("127.0.0.1:9"),
        topics=FeedTopics("alerts", "reports", "interventions", "audit"),
        store=services.store,
        desk=services.desk,
        rules=services.automation_rules(),
        group_id="unused",
    )


def bearer(services: ConsoleServices, role: Role, username: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.issuer.issue(username or role.value, role)}"}


def audit_count(store: ConsoleStore) -> int:
    return int(store.rows("SELECT COUNT(*) AS n FROM audit_log")[0]["n"])


def window_report(start: str, segment: str, scored: int, alerts: int) -> bytes:
    """A summarizer `window_summary` record with the fields the console reads."""
    return msgspec.json.encode(
        {
            "type": "window_summary",
            "stream": "transactions",
            "dimensions": {"segment": segment},
            "window_s": 60,
            "window_start": start,
            "window_end": start,
            "scored": scored,
            "anomaly_rate": alerts / scored,
            "normal": {},
            "alerts": {"count": alerts},
        }
    )


def window_alerts_of(start_s: float) -> tuple[bytes, bytes]:
    """A rate alert, as the summarizer's `rate_verdict` raises it, and an entity escalation, of one minute."""
    state = {"stream": "transactions", "start": start_s, "window_s": 60, "scored": 1_000, "alerts": 120,
             "entities": {"user-4711": 9, "user-0815": 2}, "by_detector": {"iforest": 120}}  # fmt: skip
    rate = rate_verdict(WindowSpec(), state, [[10, 1_000], [12, 1_000], [9, 1_000]])
    assert rate is not None, "120 alerts pass the default absolute criterion"
    escalation = {"type": "entity_escalation", "stream": "transactions", "entity": "user-4711", "window_s": 60,
                  "window_start": iso(start_s), "window_end": iso(start_s + 60), "alerts": 9, "limit": 5,
                  "raised_at": iso(start_s + 61)}  # fmt: skip
    return msgspec.json.encode(rate), msgspec.json.encode(escalation)


@contextmanager
def serving(app: FastAPI, **options: Any) -> Iterator[str]:
    """`app` behind a real uvicorn server on a free loopback port (requests in parallel, as in production), with
    more of uvicorn's `options`; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)
