"""The admin page in a real headless browser (Debian's chromium, driven by Playwright) against a real
`fleetwatch console serve` over HTTPS with its generated development certificate, on the session's
Kafka and Redis. Screenshots go to docs/ for the README.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from shared.artifact_store import RedisArtifactStore
from shared.console_auth import Role, UserDirectory
from shared.console_store import ConsoleStore
from shared.kafka_client import KafkaConnection, producer, read_all
from shared.local_infra.processes import free_port
from shared.registry import ModelRegistry
from shared.training import TrainingResult
from tests.console_support import PASSWORD, alert_payload, window_alerts_of, window_report
from tests.small_models import train_small, train_small_metrics

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
REGISTRY_KEY = "browser-test-registry-key-" + "k" * 16


@dataclass(frozen=True)
class RunningConsole:
    url: str
    store: ConsoleStore
    topics: dict[str, str]
    dev_dir: Path
    kafka: KafkaConnection
    rates: dict[str, dict[str, Any]]  # stream -> its deployed version's threshold_methods (FPR, recall per method)
    trained: TrainingResult  # the transactions model its versions hold
    rotated_out: ModelRegistry  # the console's registry under a key the console does not have


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker: object, redis_server: object
) -> Iterator[RunningConsole]:
    from shared.kafka_client import ensure_topics

    folder = tmp_path_factory.mktemp("console-browser")
    suffix = folder.name
    connection = KafkaConnection(kafka_broker.bootstrap)  # type: ignore[attr-defined]
    topics = {role: f"{role}.{suffix}" for role in ("alerts", "reports", "interventions", "audit")}
    ensure_topics(connection, topics.values(), partitions=1)
    prefix = f"browser-{suffix}:"
    client = redis.Redis.from_url(redis_server.url)  # type: ignore[attr-defined]
    registry = ModelRegistry(client, RedisArtifactStore(client, prefix), REGISTRY_KEY.encode(), prefix)
    rotated_out = ModelRegistry(client, RedisArtifactStore(client, prefix), b"rotated-out-" + b"k" * 20, prefix)
    trained = train_small(events=2_000, seed=7)
    registry.publish(trained.bundle, trained.draft, deploy=True)
    registry.publish(trained.bundle, trained.draft, deploy=False)
    pumps = train_small_metrics()
    registry.publish(pumps.bundle, pumps.draft, deploy=True)
    assert trained.draft.evaluation is not None and pumps.draft.evaluation is not None
    rates = {
        "transactions": trained.draft.evaluation["threshold_methods"],
        "metrics": pumps.draft.evaluation["threshold_methods"],
    }

    store_url = f"sqlite:///{folder}/console.db"
    store = ConsoleStore.open(store_url)
    users = UserDirectory(store)
    users.put("olga", PASSWORD, Role.OPERATOR)
    users.put("vera", PASSWORD, Role.VIEWER)
    users.put("ada", PASSWORD, Role.ADMIN)

    port = free_port()
    environment = {
        **os.environ,
        "FLEETWATCH_DEV_DIR": str(folder / "dev"),
        "FLEETWATCH_KAFKA_BOOTSTRAP": connection.bootstrap,
        "FLEETWATCH_REDIS_URL": redis_server.url,  # type: ignore[attr-defined]
        "FLEETWATCH_REDIS_PREFIX": prefix,
        "FLEETWATCH_REGISTRY_KEY": REGISTRY_KEY,
        "FLEETWATCH_TOPICS__ALERTS": topics["alerts"],
        "FLEETWATCH_TOPICS__REPORTS": topics["reports"],
        "FLEETWATCH_CONSOLE__INTERVENTIONS_TOPIC": topics["interventions"],
        "FLEETWATCH_CONSOLE__AUDIT_TOPIC": topics["audit"],
        "FLEETWATCH_CONSOLE__GROUP_ID": f"console-{suffix}",
        "FLEETWATCH_CONSOLE__STORE_URL": store_url,
        "FLEETWATCH_WORKER__STREAMS": '["transactions", "metrics"]',
    }
    command = [sys.executable, "-m", "workers.cli", "console", "serve", "--port", str(port)]
    url = f"https://127.0.0.1:{port}"
    with open(folder / "log", "w") as log:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_for_https(url + "/healthz", process, folder / "log")
            yield RunningConsole(url, store, topics, folder / "dev", connection, rates, trained, rotated_out)
        finally:
            process.terminate()
            process.wait(20)


def _wait_for_https(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the self-signed dev certificate
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the console exited: {log.read_text()}"
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the console did not answer on {url}: {log.read_text()}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def new_page(browser: Browser) -> Page:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 1000})
    return context.new_page()


def log_in(page: Page, url: str, username: str) -> None:
    page.goto(url + "/")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login button[type=submit]")
    expect(page.locator("#who")).to_contain_text(username)


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_operator_locks_a_user_through_the_confirmation_dialog(console: RunningConsole, browser: Browser) -> None:
    writer = producer(console.kafka)
    writer.produce(console.topics["alerts"], alert_payload("user-4711", "medium"), key="user-4711")
    writer.produce(console.topics["alerts"], alert_payload("user-0815", "high"), key="user-0815")
    for minute, (scored, alerts) in enumerate([(900, 4), (950, 6), (1000, 5), (980, 19), (1010, 7), (990, 5)]):
        writer.produce(
            console.topics["reports"],
            window_report(f"2026-11-30T08:{minute:02d}:00+00:00", "loose-passive", scored, alerts),
        )
    for record in window_alerts_of(1_795_999_980.0):
        writer.produce(console.topics["alerts"], record)
    assert writer.flush(10) == 0
    page = new_page(browser)
    log_in(page, console.url, "olga")
    row = page.locator("#alerts tbody tr", has_text="user-4711")
    expect(row).to_be_visible(timeout=30_000)  # arrived through Kafka and the page's live polling
    page.reload()  # the rate alerts and escalations panel loads at start, then every 15 s
    window_alerts = page.locator("#window-alerts tbody tr")
    expect(window_alerts).to_have_count(2, timeout=30_000)
    expect(window_alerts.first).to_contain_text("entity escalation")
    expect(window_alerts.first).to_contain_text("user-4711")
    expect(window_alerts.last).to_contain_text("rate 12.00 % of 1000 (absolute, relative; baseline 1.03 %)")
    row.click()
    expect(page.locator("#alert-detectors tbody tr")).to_have_count(2)
    page.screenshot(path=str(DOCS / "console-operator.png"), full_page=True)

    page.click("#alert-actions button:has-text('Lock account')")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("user-4711")
    page.fill("#confirm-reason", "card testing pattern confirmed by phone")
    page.screenshot(path=str(DOCS / "console-confirm.png"))
    page.click("#confirm-ok")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(page.locator("#alert-controls")).to_contain_text("account: locked")
    expect(page.locator("#audit tbody tr").first).to_contain_text("lock_account")

    def published() -> list[dict[str, object]]:
        records = read_all(console.kafka, console.topics["interventions"], max_wait_s=5)
        return [msgspec.json.decode(m.value()) for m in records]

    wait_until(lambda: any(r["action"] == "lock_account" for r in published()))
    [lock] = [r for r in published() if r["action"] == "lock_account"]
    assert lock["target"] == "user-4711" and lock["actor"] == "olga"
    assert lock["reason"] == "card testing pattern confirmed by phone"
    audit = console.store.rows("SELECT actor, action, target, request_id FROM audit_log WHERE actor = 'olga'")
    assert [(a["action"], a["target"]) for a in audit] == [("lock_account", "user-4711")]
    assert audit[0]["request_id"] == lock["request_id"]
    assert (console.dev_dir / "console-dev-cert.pem").exists()  # TLS with the certificate made on first start


def test_a_viewer_sees_no_action_buttons(console: RunningConsole, browser: Browser) -> None:
    page = new_page(browser)
    log_in(page, console.url, "vera")
    row = page.locator("#alerts tbody tr").first
    expect(row).to_be_visible(timeout=30_000)
    row.click()
    expect(page.locator("#alert-detectors tbody tr")).to_have_count(2)
    assert page.locator("#alert-actions button").count() == 0
    assert page.locator("#models button").count() == 0
    assert page.locator("#models input[type=radio]:not([disabled])").count() == 0
    assert page.locator("#audit-panel").is_hidden()
    page.screenshot(path=str(DOCS / "console-viewer.png"), full_page=True)


def shown_rates(measured: dict[str, float]) -> str:
    """A method's rates as the page shows them under its threshold, one a line (JavaScript's toFixed rounds half
    away from zero)."""
    fpr = Decimal(100 * measured["fpr"]).quantize(Decimal("0.1"), ROUND_HALF_UP)
    recall = Decimal(100 * measured["recall"]).quantize(Decimal("1"), ROUND_HALF_UP)
    return f"FPR {fpr}% recall {recall}%"


def test_an_admin_picks_a_threshold_method_seeing_each_methods_false_positive_rate_and_recall(
    console: RunningConsole, browser: Browser
) -> None:
    page = new_page(browser)
    log_in(page, console.url, "ada")
    expect(page.locator("#models h3", has_text="metrics: deployed v1")).to_be_visible()
    for detectors in console.rates.values():  # every detector name is unique across the two streams
        for detector, methods in detectors.items():
            for method, measured in methods.items():
                radio = page.locator(f"input[name='method-{detector}'][value='{method}']")
                expect(page.locator("#models label", has=radio)).to_contain_text(
                    shown_rates(measured), use_inner_text=True
                )
    picker = page.locator("#models > div", has=page.locator("input[name='method-aakr']"))
    expect(picker).to_contain_text("false-positive rate and recall on the version's labelled test part")
    page.locator("#models-panel").screenshot(path=str(DOCS / "console-thresholds.png"))

    picker.locator("input[name='method-aakr'][value='quantile']").check()
    picker.locator("button", has_text="Apply threshold methods").click()
    expect(page.locator("#confirm-text")).to_contain_text("New version of metrics from v1")
    page.fill("#confirm-reason", "quantile: more faults caught for a few more false positives")
    page.click("#confirm-ok")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(page.locator("#models h3", has_text="metrics: deployed v2")).to_be_visible()
    expect(page.locator("#models h3", has_text="Threshold methods of v2")).to_be_visible()
    chosen = page.locator("input[name='method-aakr'][value='quantile']")
    expect(chosen).to_be_checked()
    expect(page.locator("#models label", has=chosen)).to_contain_text(
        shown_rates(console.rates["metrics"]["aakr"]["quantile"]), use_inner_text=True
    )  # the new version keeps its base's measured rates
    expect(page.locator("#audit tbody tr").first).to_contain_text("set_thresholds")


def test_versions_that_do_not_verify_are_shown_refused_with_why_and_nothing_to_promote_or_derive(
    console: RunningConsole, browser: Browser
) -> None:
    """Last here: it deploys a version the console refuses."""
    for deploy in (False, True):  # transactions v3, then v4 deployed, both signed with a key rotated out
        console.rotated_out.publish(console.trained.bundle, console.trained.draft, deploy=deploy)
    page = new_page(browser)
    log_in(page, console.url, "ada")
    expect(page.locator("#models h3", has_text="transactions: deployed v4")).to_be_visible()
    for version, shown in ((3, "v3"), (4, "v4 *")):
        row = page.locator("#models tr", has_text=f"refused: transactions v{version}: ")
        expect(row.locator("td").first).to_have_text(shown)
        expect(row).to_contain_text("the manifest's signature does not match (tampered or another key)")
        expect(row.locator("button")).to_have_count(0)
    verified = page.locator("#models tr", has=page.locator("td", has_text=re.compile(r"^v2$")))
    expect(verified.locator("button", has_text="Promote")).to_have_count(1)
    # one threshold picker, the metrics stream's: none from the refused deployed transactions version
    expect(page.locator("#models h3", has_text="Threshold methods of")).to_have_count(1)
    expect(page.locator("#models button", has_text="Apply threshold methods")).to_have_count(1)
