"""`fleetwatch summarizer`: tumbling windows over the scored outputs, reported when event time passes them.

A faust-streaming app in two stages:

1. `forward_summaries` / `forward_alerts` read the summary and alert topics (read_committed: what the
   workers' transactions committed) in batches, keep what decodes as a scored item, and send each
   batch, keyed by stream, to an internal topic; any replica runs this stage for the source
   partitions it holds. Items remember their source partition and offset.
2. `merge` folds a batch into the open windows kept in a changelog-backed table
   (`shared.windows.partials_of` / `merge_partials`), closes windows once the stream's watermark (the
   event time every active input partition of the workers has reached) passes them, and writes window
   reports to `topics.reports`, rate alerts and entity escalations to the alert topic. Keyed by stream,
   all windows of a stream live on one partition (the rate criterion needs the whole stream), so a
   restarted or replacing summarizer recovers exactly those windows.

Delivery: faust runs at-least-once, and the windows make it effectively exactly-once for their
figures: every window keeps the newest offset it folded per source partition and skips older items, so
a batch re-read after a crash counts once (each window's state is one changelog record, written
whole). Report, rate-alert and escalation records are at-least-once: a crash between sending one and
storing the window's new state can repeat it; (stream, window, key) identifies it for deduplication.
faust's own exactly-once mode is not used: it picks a send's transaction by the destination
partition's topic group, so sends to an internal topic the same app reads stay in transactions that
only commit once that topic is read, which it never is (read_committed) - the pipeline stalls.

Window closing is ours, not faust's `.tumbling()` tables: those expire by Kafka record timestamps on a
cleanup timer, while reports here follow the embedded event time with an allowed lateness.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import faust
import msgspec
from faust.streams import Stream
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from shared.config import FleetwatchSettings, SummarizerSettings
from shared.errors import FleetwatchError
from shared.faust_connection import faust_connection
from shared.http_endpoints import start_http_endpoints
from shared.kafka_client import ensure_topics
from shared.logs import get_logger
from shared.metrics import (
    ACTIVE_PARTITIONS,
    CHANGELOG_RECOVERY_SECONDS,
    RATE_ALERTS,
    RECORDS_AGGREGATED,
    WATERMARK,
    WINDOWS_CLOSED,
)
from shared.windows import (
    FoldOutcome,
    ScoredItem,
    WindowSpec,
    close_windows,
    merge_partials,
    origins_id,
    partials_of,
    scored_item,
    watermark_id,
)

log = get_logger("fleetwatch.summarizer")

ITEMS_DECODER = msgspec.msgpack.Decoder(list[ScoredItem])


def window_spec(summarizer: SummarizerSettings) -> WindowSpec:
    rate = summarizer.rate
    return WindowSpec(
        sizes_s=tuple(summarizer.window_sizes_s),
        lateness_s=summarizer.allowed_lateness_s,
        rate_window_s=rate.window_s,
        rate_min_alerts=rate.min_alerts,
        rate_baseline_multiple=rate.baseline_multiple,
        rate_baseline_windows=rate.baseline_windows,
        rate_baseline_min_windows=rate.baseline_min_windows,
        rate_relative_min_alerts=rate.relative_min_alerts,
        entity_max_alerts=rate.entity_max_alerts,
        idle_origin_s=summarizer.idle_partition_s,
    )


def summary_topics(settings: FleetwatchSettings) -> list[str]:
    """Every configured stream's summary topic (the alert topic is shared)."""
    return sorted({stream.summary_topic for stream in settings.streams.values()})


def items_topic(summarizer: SummarizerSettings) -> str:
    return f"{summarizer.app_id}-items"


def _read_committed_in_at_least_once_mode() -> None:
    """faust ties read_committed to its exactly-once mode; the summarizer needs it without (the workers
    write in transactions, and an aborted one must not be counted). aiokafka reads the setting when the
    consumer starts, so setting it on the freshly created consumer is enough."""
    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "read_committed", False):
        return

    def create_read_committed(thread: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = create(thread, transport)
        consumer._isolation_level = "read_committed"
        return consumer

    create_read_committed.read_committed = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_read_committed  # type: ignore[method-assign,assignment]


class TableView(MutableMapping[str, Any]):
    """A faust Table of msgpack values as the plain mapping `shared.windows` merges into.

    Nested values are changed in place, so every key read is treated as changed; `write_back` writes
    each once (one changelog record per window per batch, not per event). Each key is a whole window,
    so a crash between two writes leaves every window consistent on its own.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._local: dict[str, Any] = {}
        self._deleted: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key in self._deleted:
            raise KeyError(key)
        if key not in self._local:
            stored = self._table.get(key.encode())
            if stored is None:
                raise KeyError(key)
            self._local[key] = msgspec.msgpack.decode(stored)
        return self._local[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._deleted.discard(key)
        self._local[key] = value

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError for a missing key, as a mapping should
        del self._local[key]
        self._deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        """The table's keys (of every partition this replica holds) with this batch's changes."""
        stored = {key.decode() for key in self._table}
        yield from (stored | set(self._local)) - self._deleted

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def write_back(self) -> None:
        for key, value in self._local.items():
            self._table[key.encode()] = msgspec.msgpack.encode(value)
        for key in self._deleted:
            self._table.pop(key.encode(), None)
        self._local.clear()
        self._deleted.clear()


def build_app(settings: FleetwatchSettings, data_dir: Path, recovered: threading.Event) -> faust.App:
    """The app; `recovered` is set once its tables are recovered (for /readyz, which runs in another
    thread and must not touch faust's objects: they belong to the event loop's thread)."""
    summarizer = settings.summarizer
    spec = window_spec(summarizer)
    connection = faust_connection(settings.kafka_connection())
    if connection.not_applied:
        log.warning("kafka_properties_not_applied", properties=connection.not_applied, reason="no aiokafka counterpart")
    app = faust.App(
        summarizer.app_id,
        broker=connection.brokers,
        broker_credentials=connection.credentials,
        store="memory://",
        web_enabled=False,
        processing_guarantee="at_least_once",
        topic_partitions=summarizer.partitions,
        topic_replication_factor=summarizer.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=summarizer.commit_interval_s,
        # faust refuses a session above its request timeout (90 s); a third of the session between heartbeats
        # leaves room for one missed heartbeat at the shortest sessions.
        broker_session_timeout=summarizer.session_timeout_s,
        broker_request_timeout=max(90.0, summarizer.session_timeout_s),
        broker_heartbeat_interval=min(3.0, summarizer.session_timeout_s / 3),
        datadir=str(data_dir),
    )
    # Bytes in and out everywhere: records are decoded with msgspec, not faust's codecs.
    summaries = app.topic(*summary_topics(settings), key_serializer="raw", value_serializer="raw")
    alerts = app.topic(settings.topics.alerts, key_serializer="raw", value_serializer="raw")
    items = app.topic(
        items_topic(summarizer), partitions=summarizer.partitions, internal=True, key_serializer="raw",
        value_serializer="raw",
    )  # fmt: skip
    reports = app.topic(settings.topics.reports, key_serializer="raw", value_serializer="raw")
    schema: faust.Schema = faust.Schema(key_serializer="raw", value_serializer="raw")
    windows = app.Table("windows", schema=schema, key_type=bytes, value_type=bytes, partitions=summarizer.partitions)

    async def forward(stream: faust.StreamT) -> None:
        batches = cast(Stream, stream).take_events(summarizer.batch_size, within=summarizer.batch_timeout_s)
        async for events in batches:
            by_stream: dict[str, list[ScoredItem]] = {}
            for event in events:
                message = event.message
                item = scored_item(event.value, f"{message.topic}:{message.partition}", message.offset)
                if item is None:  # our own rate alerts, foreign or malformed records
                    RECORDS_AGGREGATED.labels("-", "skipped").inc()
                    continue
                by_stream.setdefault(item.stream, []).append(item)
            for stream_name, stream_items in by_stream.items():
                await items.send(key=stream_name.encode(), value=msgspec.msgpack.encode(stream_items))

    app.agent(summaries, name="forward_summaries")(forward)
    app.agent(alerts, name="forward_alerts")(forward)

    @app.agent(items, name="merge")
    async def merge(stream: faust.StreamT) -> None:
        async for event in stream.events():
            stream_name = (event.key or b"").decode()
            batch = ITEMS_DECODER.decode(event.value)
            view = TableView(windows)
            now_s = time.time()
            partials = partials_of(spec, batch, view, now_s=now_s)
            outcome = merge_partials(spec, view, partials, now_s=now_s)
            closed = close_windows(spec, view, stream_name)
            _count_aggregated(stream_name, outcome)
            if (watermark := view.get(watermark_id(stream_name))) is not None:  # none before a batch held an item
                WATERMARK.labels(stream_name).set(watermark)
                ACTIVE_PARTITIONS.labels(stream_name).set(len(view[origins_id(stream_name)]))
            for escalation in outcome.escalations:
                await alerts.send(key=escalation["entity"].encode(), value=msgspec.json.encode(escalation))
                RATE_ALERTS.labels(stream_name, "entity_escalation").inc()
                log.warning("entity_escalation", stream=stream_name, entity=escalation["entity"])
            for report in closed.reports:
                await reports.send(key=stream_name.encode(), value=msgspec.json.encode(report))
                WINDOWS_CLOSED.labels(stream_name, f"{report['window_s']}s").inc()
            if closed.reports and summarizer.reports_file is not None:
                with summarizer.reports_file.open("ab") as lines:
                    lines.writelines(msgspec.json.encode(report) + b"\n" for report in closed.reports)
            for rate_alert in closed.rate_alerts:
                await alerts.send(key=stream_name.encode(), value=msgspec.json.encode(rate_alert))
                RATE_ALERTS.labels(stream_name, "rate_alert").inc()
                log.warning("rate_alert", **{k: rate_alert[k] for k in ("stream", "window_start", "rate", "alerts")})
            # The state that says a window closed is written only once its report was handed to the producer: a
            # crash before that reads the batch again and repeats what was sent (at-least-once); written first,
            # it could land without the report, lost for good (until 2026-12-02).
            view.write_back()

    started = time.monotonic()

    @app.task
    async def report_recovery() -> None:
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]  # not on the declared type
        CHANGELOG_RECOVERY_SECONDS.set(time.monotonic() - started)
        recovered.set()
        log.info("summarizer_ready", recovery_s=round(time.monotonic() - started, 3))

    return app


def _count_aggregated(stream: str, outcome: FoldOutcome) -> None:
    """Records folded, by kind (replays left out), and records too late for their window."""
    RECORDS_AGGREGATED.labels(stream, "alert").inc(outcome.alerts)
    RECORDS_AGGREGATED.labels(stream, "normal").inc(outcome.normal)
    if outcome.late:
        RECORDS_AGGREGATED.labels(stream, "late").inc(outcome.late)


class BoundedStopWorker(faust.Worker):
    """faust's worker with a bound on the graceful stop: a stop that hangs (a broker gone, an agent
    stuck) ends the process after `stop_bound_s`, so an orchestrator's restart is never blocked."""

    def __init__(self, app: faust.App, stop_bound_s: float, **options: Any) -> None:
        super().__init__(app, **options)
        self._stop_bound_s = stop_bound_s

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        watchdog = threading.Timer(self._stop_bound_s, _exit_after_bound)
        watchdog.daemon = True
        watchdog.start()
        super()._schedule_shutdown(signal)


def _exit_after_bound() -> None:
    log.error("graceful stop exceeded its bound; exiting now")
    os._exit(3)


def run_summarizer(settings: FleetwatchSettings, data_dir: Path) -> None:
    """Run until SIGTERM or SIGINT (faust's worker stops the agents, commits and closes the clients)."""
    summarizer = settings.summarizer
    data_dir.mkdir(parents=True, exist_ok=True)
    # faust subscribes to the topics that exist when it starts; create the ones this app reads or writes.
    topics = settings.topics
    ensure_topics(
        settings.kafka_connection(),
        [items_topic(summarizer)],
        partitions=summarizer.partitions,
        replication_factor=summarizer.replication_factor,
    )
    ensure_topics(
        settings.kafka_connection(),
        [*summary_topics(settings), topics.alerts, topics.reports],
        partitions=summarizer.partitions,
    )
    recovered = threading.Event()
    _read_committed_in_at_least_once_mode()
    app = build_app(settings, data_dir, recovered)
    server = start_http_endpoints(summarizer.metrics_port, ready=recovered.is_set)
    log.info("summarizer_starting", app_id=summarizer.app_id, metrics_port=server.server_port,
             window_sizes_s=summarizer.window_sizes_s, lateness_s=summarizer.allowed_lateness_s)  # fmt: skip
    try:
        worker = BoundedStopWorker(app, summarizer.shutdown_timeout_s, loglevel=settings.log_level, quiet=True)
        worker.execute_from_commandline()
    except SystemExit as exc:  # faust's worker always exits; only a failure is news
        if exc.code not in (0, None):
            raise FleetwatchError(f"summarizer stopped with exit code {exc.code} (see the log above)") from None
    finally:
        server.shutdown()
    log.info("summarizer_stopped", app_id=summarizer.app_id)
