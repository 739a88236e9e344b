"""The Prometheus metrics every fleetwatch process exposes, named by Prometheus conventions.

Declared once here so that dashboards, alert rules and tests refer to the same names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.batch_histogram import BatchHistogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# Scoring workers
EVENTS = Counter(
    "fleetwatch_events_total",
    "Events scored, by stream and outcome (alert, summary, deadletter); counted once their batch committed.",
    ["stream", "outcome"],
)
IDLE_SESSIONS_ENDED = Counter(
    "fleetwatch_idle_sessions_ended_total",
    "End records a worker produced for sessions idle past their stream's timeout.",
    ["stream"],
)
DEAD_LETTERS = Counter(
    "fleetwatch_dead_letters_total",
    "Records sent to the dead-letter topic, by reason kind; counted once their batch committed.",
    ["stream", "kind"],
)
BATCH_SIZE = Histogram(
    "fleetwatch_batch_size", "Records per consumed micro-batch.", ["stream"], buckets=BATCH_SIZE_BUCKETS
)
STAGE_SECONDS = Histogram(
    "fleetwatch_batch_stage_seconds",
    "Time per batch in each stage (decode, featurize, state, score, encode, state_write, produce, commit).",
    ["stream", "stage"],
    buckets=LATENCY_BUCKETS,
)
DETECTOR_SECONDS = Histogram(
    "fleetwatch_detector_scoring_seconds",
    "Time one detector takes to score one batch.",
    ["stream", "detector"],
    buckets=LATENCY_BUCKETS,
)
EVENT_LATENCY = BatchHistogram(
    "fleetwatch_event_to_output_latency_seconds",
    "From the input record's Kafka timestamp to its output being handed to the producer.",
    ["stream"],
    buckets=LATENCY_BUCKETS,
)  # observed per batch: one call per event was a measurable share of the worker's CPU
DEPLOYED_VERSION = Gauge("fleetwatch_deployed_version", "Model version number this process scores with.", ["stream"])
RELOADS = Counter(
    "fleetwatch_model_reloads_total",
    "Model version loads, by result (loaded, refused, unavailable: the store did not answer; tried again).",
    ["stream", "result"],
)
TRANSACTIONS_ABORTED = Counter(
    "fleetwatch_kafka_transactions_aborted_total", "Kafka transactions aborted and retried.", ["stream"]
)
OUTPUTS_NOT_ACKNOWLEDGED = Counter(
    "fleetwatch_outputs_not_acknowledged_total",
    "Output records the broker refused or did not acknowledge in time, by error (their batch is read again).",
    ["error"],
)
BATCHES_REREAD = Counter(
    "fleetwatch_batches_reread_total",
    "Batches consumed again because their outputs did not commit, by reason (delivery_failed, transaction_aborted).",
    ["stream", "reason"],
)
OFFSET_COMMITS_FAILED = Counter(
    "fleetwatch_offset_commits_failed_total",
    "At-least-once offset commits that failed (a later commit supersedes them, or their outputs repeat).",
)
PROFILE_STORE_ERRORS = Counter(
    "fleetwatch_profile_store_errors_total",
    "Batches whose user profiles could not be read or written (scored with empty histories instead).",
    ["stream"],
)
CONSUMER_LAG = Gauge(
    "fleetwatch_consumer_lag_records",
    "High watermark minus position, per assigned partition.",
    ["topic", "partition"],
)

# Trainer
TRAINING_RUNS = Counter(
    "fleetwatch_training_runs_total",
    "Training rounds, by result (published, refused_by_gate, failed; crashed: an unexpected error, see the log).",
    ["stream", "result"],
)
TRAINING_REQUESTS_REJECTED = Counter(
    "fleetwatch_training_requests_rejected_total",
    "Requests on the trainer's Redis list that were dropped, by kind (not_json, wrong_shape, unknown_stream).",
    ["kind"],
)
TRAINING_SECONDS = Histogram(
    "fleetwatch_training_duration_seconds",
    "Wall time of one training round.",
    ["stream"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
)

# Summarizer
WINDOWS_CLOSED = Counter(
    "fleetwatch_summary_windows_closed_total", "Windows closed and reported.", ["stream", "window"]
)
RECORDS_AGGREGATED = Counter(
    "fleetwatch_summary_records_aggregated_total", "Records folded into windows.", ["stream", "kind"]
)
RATE_ALERTS = Counter("fleetwatch_rate_alerts_total", "Rate alerts and entity escalations raised.", ["stream", "type"])
WATERMARK = Gauge(
    "fleetwatch_summary_watermark_timestamp_seconds",
    "The stream's event time (Unix time) every active input partition has reached; windows close behind it.",
    ["stream"],
)
ACTIVE_PARTITIONS = Gauge(
    "fleetwatch_summary_active_partitions",
    "Workers' input partitions that hold the stream's watermark (seen within idle_partition_s).",
    ["stream"],
)
CHANGELOG_RECOVERY_SECONDS = Gauge(
    "fleetwatch_changelog_recovery_seconds", "Time the summarizer took to recover its tables at start."
)

# Operations console
CONSOLE_ACTIONS = Counter(
    "fleetwatch_console_actions_total",
    "Interventions recorded by the console, by action and actor kind (person, automation).",
    ["action", "actor"],
)
CONSOLE_LOGINS = Counter(
    "fleetwatch_console_logins_total",
    "Console login attempts, by result (ok, refused, throttled, busy: no password-hash slot came free).",
    ["result"],
)
CONSOLE_RECORDS_INGESTED = Counter(
    "fleetwatch_console_records_ingested_total",
    "Records the console read from Kafka into its store, by kind (alert, report, rate_alert, entity_escalation, "
    "skipped).",
    ["kind"],
)
CONSOLE_KAFKA_LAST_CONTACT = Gauge(
    "fleetwatch_console_kafka_last_contact_timestamp_seconds",
    "When the console's Kafka feeds last got an answer from the brokers (Unix time; 0: never).",
)
CONSOLE_EXPORT_FAILURES = Counter(
    "fleetwatch_console_export_failures_total",
    "Export rounds to the interventions and audit topics that left records unacknowledged (retried later).",
)
