"""The console's Kafka edges: alerts and window reports in, interventions and audit records out.

One thread reads the alert topic and the reports topic (`read_committed`, its own consumer group),
stores each record (ids make repeats harmless), runs the automation rules on alerts that are new (marked
in the transaction that stores them, so rules cut short by a store that stopped answering run when the batch
is read again), and commits offsets after the store and the rules did. The same thread exports the store's
outbox to the `interventions` and `audit` topics (keyed by target) and marks records published only once the
broker acknowledged them: at least once on Kafka, the intervention id / audit seq identifies a repeat.

Every `CONTACT_INTERVAL_S` the thread asks the brokers for the alert topic's metadata: the last answer is
`last_contact` (and a Prometheus timestamp), which the console's probes report. A Kafka outage does not make
the console unready: analysts keep reading stored alerts and acting, their interventions wait in the outbox.
A store that does not answer (a PostgreSQL server restarting) pauses the feeds: the batch it could not store
is read again from its first offsets once the store answers. Any other error ends the thread and makes the
console unhealthy, since only a restart brings it back.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from shared import alert_inbox, interventions
from shared.automation_rules import AutomationRule, run_rules
from shared.console_store import ConsoleStore, StoreUnavailable
from shared.interventions import InterventionDesk
from shared.kafka_client import KafkaConnection, consumer, producer
from shared.logs import get_logger
from shared.metrics import CONSOLE_EXPORT_FAILURES, CONSOLE_KAFKA_LAST_CONTACT, CONSOLE_RECORDS_INGESTED

log = get_logger("fleetwatch.console")

CONTACT_INTERVAL_S = 5.0
"""How often the feeds ask the brokers for metadata, to know they still answer."""

CONTACT_TIMEOUT_S = 3.0
"""How long one such request may take before it counts as no answer."""

STORE_RETRY_S = 1.0
"""How long the feeds wait before trying a store that did not answer again."""


@dataclass(frozen=True)
class FeedTopics:
    alerts: str
    reports: str
    interventions: str
    audit: str


@dataclass
class ConsoleFeeds:
    connection: KafkaConnection
    topics: FeedTopics
    store: ConsoleStore
    desk: InterventionDesk
    rules: list[AutomationRule]
    group_id: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    assigned: threading.Event = field(default_factory=threading.Event)
    last_contact: float | None = None  # time.monotonic() of the brokers' last answer
    _brokers_answer: bool = True  # the last request's outcome: warnings on a change, not on every request

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-feeds", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def died(self) -> bool:
        """The thread ended without being asked to (an unexpected error): only a restart brings the feeds back."""
        return self._thread is not None and not self._thread.is_alive() and not self._stop.is_set()

    def status(self) -> dict[str, Any]:
        """What the probes report: running, partitions assigned, seconds since the brokers last answered."""
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "partitions_assigned": self.assigned.is_set(),
            "kafka_last_contact_s_ago": None
            if self.last_contact is None
            else round(time.monotonic() - self.last_contact, 1),
        }

    def wake(self) -> None:
        """Export now (called after an intervention was stored)."""
        self._wake.set()

    def _run(self) -> None:
        reader = consumer(self.connection, self.group_id)
        writer = producer(self.connection)
        reader.subscribe(
            [self.topics.alerts, self.topics.reports],
            on_assign=lambda _consumer, _partitions: self.assigned.set(),
            on_revoke=lambda _consumer, _partitions: self.assigned.clear(),
            on_lost=lambda _consumer, _partitions: self.assigned.clear(),
        )
        asked = -math.inf
        try:
            while not self._stop.is_set():
                if time.monotonic() - asked >= CONTACT_INTERVAL_S:
                    asked = time.monotonic()
                    self._ask_brokers(reader)
                messages = reader.consume(num_messages=500, timeout=0.2)
                good = [m for m in messages if m.error() is None]
                for message in messages:
                    error = message.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        log.warning("console consumer error", error=str(error))
                try:
                    if good:
                        self.ingest([m.value() or b"" for m in good])
                        reader.commit(asynchronous=False)
                    self.export(writer)
                except StoreUnavailable as exc:
                    log.warning("console feeds: the store does not answer; retrying", error=str(exc))
                    _rewind(reader, good)
                    self._stop.wait(STORE_RETRY_S)
                    continue
                if not good:
                    self._wake.wait(0.2)
                    self._wake.clear()
        except Exception:
            log.exception("console feeds stopped by an unexpected error")
            raise
        finally:
            reader.close()
            writer.flush(5)

    def _ask_brokers(self, reader: Any) -> None:
        try:
            reader.list_topics(self.topics.alerts, timeout=CONTACT_TIMEOUT_S)
        except KafkaException as exc:
            if self._brokers_answer:
                log.warning("console feeds: no answer from the Kafka brokers", topic=self.topics.alerts, error=str(exc))
            self._brokers_answer = False
            return
        if not self._brokers_answer:
            log.info("console feeds: the Kafka brokers answer again")
        self._brokers_answer = True
        self.last_contact = time.monotonic()
        CONSOLE_KAFKA_LAST_CONTACT.set_to_current_time()

    def ingest(self, payloads: list[bytes]) -> list[str]:
        """Store alerts, window reports and window alerts; run the rules on every alert stored but not yet through
        them; return the ids of alerts seen for the first time."""
        new_alerts = []
        with self.store.transaction() as tx:
            for record in alert_inbox.decode_records(payloads):
                kind = (record or {}).get("type")
                try:
                    if kind == "alert" and record is not None:
                        if (identifier := alert_inbox.store_alert(tx, record)) is not None:
                            new_alerts.append(identifier)
                            if self.rules:
                                alert_inbox.await_rules(tx, identifier)
                    elif kind == "window_summary" and record is not None:
                        alert_inbox.store_window_report(tx, record)
                    elif kind in alert_inbox.WINDOW_ALERT_KINDS and record is not None:
                        alert_inbox.store_window_alert(tx, record)
                    else:
                        kind = "skipped"
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("console skipped a malformed record", kind=kind, error=repr(exc))
                    kind = "skipped"
                CONSOLE_RECORDS_INGESTED.labels("report" if kind == "window_summary" else kind).inc()
        self.apply_rules()
        return new_alerts

    def apply_rules(self) -> None:
        """Run the rules on each alert awaiting them, then clear its mark. A store that does not answer leaves the
        rest marked for the batch's next reading; a rule run again acts no more (idempotency keys)."""
        for identifier in alert_inbox.alerts_awaiting_rules(self.store):
            alert = alert_inbox.alert_report(self.store, identifier)
            if alert is not None:
                run_rules(self.rules, self.desk, self.store, alert)
            alert_inbox.rules_ran(self.store, identifier)

    def export(self, writer: Any) -> int:
        """Send the outbox to Kafka; mark what was acknowledged. Returns how many records were sent."""
        records, entries = interventions.unpublished(self.store)
        if not records and not entries:
            return 0
        for record in records:
            writer.produce(self.topics.interventions, value=msgspec.json.encode(record), key=record.target)
        for entry in entries:
            writer.produce(self.topics.audit, value=msgspec.json.encode(entry), key=entry.target)
        report = writer.wait_for_deliveries(10.0)
        if not report.complete:
            CONSOLE_EXPORT_FAILURES.inc()
            log.warning(
                "console export not acknowledged; retrying", errors=report.errors, waiting=report.unacknowledged
            )
            return 0
        interventions.mark_published(self.store, records, entries)
        return len(records) + len(entries)


def _rewind(reader: Any, messages: list[Message]) -> None:
    """Seek each partition back to the first of `messages` it gave: they are read again, none is lost."""
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and partition is not None and offset is not None:
            first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
    for (topic, partition), offset in first.items():
        reader.seek(TopicPartition(topic, partition, offset))
