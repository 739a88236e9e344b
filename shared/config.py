"""Typed configuration in one place.

Precedence, highest first: CLI flags (passed as keyword arguments), environment variables
(`FLEETWATCH_*`, nested with `__`), the TOML config file (`FLEETWATCH_CONFIG`, default
`./fleetwatch.toml`), the connection file written by `fleetwatch dev up`, then defaults that run locally.
librdkafka properties (SASL, TLS, tuning) pass through unchanged in `kafka_properties`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.kafka_client import KafkaConnection
from shared.pipeline import Stream
from shared.streams.catalog import CATALOG, load_plugins, stream_named
from shared.thresholds import ThresholdConfig

DEV_DIR_NAME = ".fleetwatch"
CONNECTION_FILE_NAME = "connection.env"


def dev_dir() -> Path:
    """The one project-local folder that holds the local stack's data (removed by `dev down --purge`)."""
    return Path(os.environ.get("FLEETWATCH_DEV_DIR", DEV_DIR_NAME)).resolve()


def cache_dir() -> Path:
    """Downloads (Kafka jars, Maven repository) that survive `dev down --purge`."""
    return Path(os.environ.get("FLEETWATCH_CACHE_DIR", ".cache")).resolve()


class Section(BaseModel):
    """A part of the settings: a key it does not have is an error, so a misspelt one is not silently a default."""

    model_config = ConfigDict(extra="forbid")


class TopicNames(Section):
    """The topics every stream shares; each stream's input and summary topics are in its own settings."""

    alerts: str = "alerts"
    deadletter: str = "deadletter"
    reports: str = "reports.summary"


class DetectorConfig(Section):
    """One entry of a stream's `model_configs` (seed 000): a name, a detector kind and its parameters."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = Field(
        None,
        description="the feature columns it sees, by name or shell-style pattern (`level:*`); by default every one "
        "but the stream's categorical ones",
    )
    specialist: bool = Field(
        False,
        description="a detector of one kind of evidence: it alerts alone when its own surprise is over the fleet's "
        "threshold, instead of casting a consensus-weighted vote that would drown it",
    )


class StreamSettings(Section):
    """One stream's topics, and how its models are trained, thresholded, gated and sampled.

    Left empty, the topics and detectors are the stream's defaults (`completed`)."""

    input_topic: str = Field("", description="the topic producers write this stream's events to")
    summary_topic: str = Field("", description="where events judged normal go")
    detectors: list[DetectorConfig] = Field(default_factory=list, description="seed 000's model_configs")
    featurization: dict[str, int] = Field(
        default_factory=dict,
        description="the stream's own featurization parameters, set before it learns (metrics: window_size, "
        "window_step, level_memory); a trained version keeps them",
    )
    std_multiplier: float = 6.0
    quantile: float = 0.95
    target_fpr: float = 0.01
    fleet_fpr_budget: float = Field(
        0.0005, gt=0, lt=1, description="false-positive budget of the any-detector rule on held-out normal data"
    )
    precision_floor: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="with labelled anomalies among the calibration rows (combined alert rule): choose the members and "
        "the threshold that catch the most of them while the precision's 95 % lower bound stays at or above this, "
        "instead of the highest precision at fleet_fpr_budget (which stays the fallback when no choice reaches it)",
    )
    moving_average_window: int = 50
    gate_metric: Literal["f1", "roc_auc"] = "f1"
    gate_margin: float = Field(0.02, ge=0, description="how far below the deployed version a candidate may fall")
    shadow_floor_auc: float = Field(0.85, description="a detector below this ROC AUC is deployed in shadow mode")
    shadow_floor_pr_auc_share: float = Field(
        0.5, ge=0, le=1, description="...or one whose PR AUC is below this share of the best detector's"
    )
    exclude_labelled_anomalies: bool = True
    test_part: Literal["first", "last"] = Field(
        "last", description="where the held-out part of the time-ordered history sits (seed 003: the first days)"
    )
    alert_rule: Literal["combined", "any_detector"] = Field(
        "combined",
        description="combined: the detectors' combined score alerts; any_detector: any alerting detector below its "
        "active threshold (the methods a person picks with `models thresholds --set` decide the alerts)",
    )
    sample_rate: float = Field(1.0, gt=0, le=1)
    max_rows: int = Field(1_000_000, gt=0)
    window_hours: float | None = Field(None, gt=0, description="train on the last N hours of the topic")
    train_interval_s: float = Field(3600.0, gt=0)
    batch_alert_rate: float = Field(0.02, gt=0, lt=1, description="a batch whose anomaly rate passes this alerts")

    @field_validator("detectors")
    @classmethod
    def _detectors_build(cls, detectors: list[DetectorConfig]) -> list[DetectorConfig]:
        """Each configured detector is built (not fitted) now, so a bad kind or parameter is refused when the
        settings load rather than minutes into a round; names are unique (a version holds one detector per
        name). The stream's default detectors are not configured here and not built."""
        names = [config.name for config in detectors]
        if duplicated := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"detector names must be unique within a stream; repeated: {', '.join(duplicated)}")
        if detectors:
            from shared.detectors import build_detector  # scikit-learn loads in seconds: only when detectors are set

            for config in detectors:
                try:
                    build_detector(config.kind, config.params)
                except ValueError as exc:
                    raise ValueError(f"detector {config.name!r}: {exc}") from exc
        return detectors

    @model_validator(mode="after")
    def _thresholds_computable(self) -> StreamSettings:
        self.threshold_config()  # its ValueError names the setting and its range
        return self

    def threshold_config(self) -> ThresholdConfig:
        """The threshold methods' knobs, checked where they are defined (`shared.thresholds`)."""
        return ThresholdConfig(
            std_multiplier=self.std_multiplier,
            moving_average_window=self.moving_average_window,
            quantile=self.quantile,
            target_fpr=self.target_fpr,
            fleet_fpr_budget=self.fleet_fpr_budget,
        )

    def completed(self, stream: Stream[Any, Any]) -> StreamSettings:
        """These settings with the stream's default topics, detectors and alert rule where none are set; ValueError
        when the stream refuses its featurization parameters."""
        stream.configured(self.featurization)
        return self.model_copy(
            update={
                "input_topic": self.input_topic or stream.topics.input,
                "summary_topic": self.summary_topic or stream.topics.summary,
                "detectors": self.detectors or [DetectorConfig(**entry) for entry in stream.default_detectors],
                "alert_rule": self.alert_rule if "alert_rule" in self.model_fields_set else stream.default_alert_rule,
            }
        )


def _default_streams() -> dict[str, StreamSettings]:
    return {"transactions": StreamSettings()}


class WorkerSettings(Section):
    """The scoring workers: which streams, how they batch, and the delivery guarantee."""

    streams: list[str] = Field(default_factory=lambda: ["transactions"])
    group_id: str = Field("fleetwatch-scorers", min_length=1, description="the workers' Kafka consumer group")
    delivery: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: outputs and offsets commit in one Kafka transaction per batch; "
        "at_least_once: produce, flush, then commit offsets (faster; a crash may repeat a batch's outputs)",
    )
    batch_size: int = Field(
        5000,
        gt=0,
        description="most records per micro-batch: only a backlog fills it (batch_min_size 1 scores what has "
        "arrived), and there each batch's Redis and transaction round trips are shared by more records",
    )
    batch_min_size: int = Field(
        1,
        gt=0,
        description="score a batch once this many records have arrived (then take all waiting, up to batch_size) "
        "or batch_timeout_s has passed; 1 = score what is there as soon as anything is (lowest latency), "
        "batch_size = wait for full batches",
    )
    batch_timeout_s: float = Field(0.05, gt=0, description="longest wait to fill a micro-batch to batch_min_size")
    overlap_commit: bool = Field(
        False,
        description="commit each batch on a second thread while the next one is scored: more events/s when the "
        "worker waits on Redis and the broker; on a host whose cores the broker shares, a longer latency tail",
    )
    reconcile_interval_s: float = Field(5.0, gt=0, description="how often the deployed pointers are re-read")
    idle_sweep_interval_s: float = Field(
        5.0, gt=0, description="how often a worker ends sessions idle past their stream's timeout (in event time)"
    )
    shutdown_timeout_s: float = Field(20.0, gt=0, description="bound on a graceful stop after SIGTERM")
    metrics_port: int = 9400
    profile_ttl_days: int = 90
    top_features: int = 3
    compute_threads: int = Field(1, gt=0, description="BLAS/OpenMP threads per worker process (scale by replicas)")
    consumer_properties: dict[str, str] = Field(default_factory=dict, description="librdkafka, consumer only")
    producer_properties: dict[str, str] = Field(default_factory=dict, description="librdkafka, producer only")

    @model_validator(mode="after")
    def _min_within_batch(self) -> WorkerSettings:
        if self.batch_min_size > self.batch_size:
            raise ValueError(f"batch_min_size ({self.batch_min_size}) is above batch_size ({self.batch_size})")
        return self


class RateCriterion(Section):
    """Seed 000's batch check at stream level, and the per-entity burst limit."""

    window_s: int | None = Field(None, gt=0, description="window size the criteria apply to (default: smallest)")
    min_alerts: int = Field(100, gt=0, description="a stream window with at least this many alerts raises")
    baseline_multiple: float = Field(3.0, gt=1, description="...or an anomaly rate above this times the baseline")
    baseline_windows: int = Field(
        10, gt=0, description="the baseline is the pooled rate (their alerts over their records) of this many windows"
    )
    baseline_min_windows: int = Field(3, gt=0, description="no relative criterion before this many windows")
    relative_min_alerts: int = Field(
        5, gt=0, description="the relative criterion also needs this many alerts: one in a quiet window is no surge"
    )
    entity_max_alerts: int = Field(5, gt=0, description="more alerts than this for one user in a window escalate")

    @model_validator(mode="after")
    def _baseline_can_fill(self) -> RateCriterion:
        if self.baseline_min_windows > self.baseline_windows:
            raise ValueError(
                f"baseline_min_windows ({self.baseline_min_windows}) is above baseline_windows "
                f"({self.baseline_windows}): the relative criterion could never apply"
            )
        return self


class SummarizerSettings(Section):
    """The faust summarizer: windows over the summary and alert topics, reports to `topics.reports`."""

    app_id: str = Field(
        "fleetwatch-summarizer", min_length=1, description="faust app id: consumer group and internal topic prefix"
    )
    window_sizes_s: list[int] = Field(default_factory=lambda: [60, 3600], min_length=1)
    allowed_lateness_s: float = Field(5.0, ge=0, description="how long after its end a window still takes events")
    idle_partition_s: float = Field(
        60.0,
        gt=0,
        description="a workers' input partition whose events stopped coming this long ago (wall clock) no longer "
        "holds windows open; longer than a worker's failover (librdkafka's default session timeout is 45 s)",
    )
    partitions: int = Field(6, gt=0, description="partitions of the internal partials topic and the changelog")
    replication_factor: int = Field(
        1, gt=0, description="replicas of the internal topic and the changelog: 1 locally, 3 on a cluster"
    )
    batch_size: int = Field(1000, gt=0, description="most records folded into one partial aggregate")
    batch_timeout_s: float = Field(0.5, gt=0, description="longest wait to fill that batch")
    commit_interval_s: float = Field(1.0, gt=0, description="how often consumed offsets are committed")
    session_timeout_s: float = Field(
        60.0,
        ge=6.0,
        description="how soon a summarizer that died without leaving loses its partitions (6 s: the "
        "broker's default group.min.session.timeout.ms)",
    )
    shutdown_timeout_s: float = Field(20.0, gt=0, description="bound on a graceful stop after SIGTERM")
    reports_file: Path | None = Field(None, description="also append every window report here, one JSON line each")
    metrics_port: int = 9400
    rate: RateCriterion = Field(default_factory=RateCriterion)

    @model_validator(mode="after")
    def _windows_make_sense(self) -> SummarizerSettings:
        sizes = self.window_sizes_s
        if min(sizes) <= 0 or len(set(sizes)) != len(sizes):
            raise ValueError(f"window_sizes_s must be distinct and positive; got {sizes}")
        if self.rate.window_s is not None and self.rate.window_s not in sizes:
            raise ValueError(
                f"rate.window_s ({self.rate.window_s}) is none of window_sizes_s {sizes}: no rate alert or "
                "escalation would ever be raised"
            )
        return self


class ConsoleSettings(Section):
    """`fleetwatch console`: the HTTP API and admin page over alerts, registry and interventions."""

    host: str = "127.0.0.1"
    port: int = 8443
    store_url: str = Field(
        "sqlite:///.fleetwatch/console.db",
        description="sqlite:///PATH (embedded, the default) or postgresql://user@host/db (psycopg 3)",
    )
    tls: bool = Field(True, description="serve HTTPS; a development certificate is generated on first start")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (default: generated in .fleetwatch/)")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    signing_key: SecretStr | None = Field(None, description="HMAC key of the console's JWTs")
    signing_key_file: Path | None = Field(None, description="file holding that key (a mounted secret)")
    token_ttl_s: int = Field(3600, gt=0, description="lifetime of an access token")
    login_max_failures: int = Field(
        5, gt=0, description="login attempts per user and address in login_window_s before a pause (a success clears)"
    )
    login_window_s: float = Field(300.0, gt=0, description="...within this many seconds; the pause lasts as long")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="addresses or networks of the proxies (an ingress) whose X-Forwarded-For names the client; "
        "empty: the peer's address is the client's, and forwarded headers are ignored",
    )
    interventions_topic: str = "interventions"
    audit_topic: str = "audit"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks_without_host_bits(cls, values: Any) -> Any:
        """`10.0.0.1/8` is refused by pydantic as "not a valid network"; say why, and what was likely meant."""
        for value in values if isinstance(values, list) else []:
            if not (isinstance(value, str) and "/" in value):
                continue
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                continue  # not a network at all: pydantic says so
            if network.network_address != ipaddress.ip_interface(value).ip:
                raise ValueError(f"{value} has host bits set; did you mean {network}?")
        return values

    group_id: str = Field(
        "fleetwatch-console", min_length=1, description="consumer group reading the alert and report topics"
    )
    automation: bool = Field(True, description="apply the automation rules to every new alert")
    step_up_severity: str | None = Field("high", description="alerts of this severity require extra authentication")
    step_up_streams: list[str] = Field(default_factory=lambda: ["transactions"])
    lock_after_alerts: int | None = Field(5, gt=0, description="this many alerts of one entity lock its account")
    lock_window_s: float = Field(3600.0, gt=0, description="...within this many seconds")


class DevStackSettings(Section):
    """Ports and sizes of the local stack started by `fleetwatch dev up` (not the test fixtures)."""

    kafka_port: int = 19092
    controller_port: int = 19093
    redis_port: int = 16379
    partitions: int = 6
    kafka_heap_mb: int = 512


class FleetwatchSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEETWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = Field(
        "redis://127.0.0.1:16379/0",
        description="redis:// or rediss:// for one server; redis+cluster:// (any node) for a Redis Cluster",
    )
    kafka_properties: dict[str, str] = Field(
        default_factory=dict, description="librdkafka properties passed through unchanged"
    )
    topics: TopicNames = Field(default_factory=TopicNames)
    dev: DevStackSettings = Field(default_factory=DevStackSettings)
    streams: dict[str, StreamSettings] = Field(
        default_factory=_default_streams, description="per stream of the catalog: topics, detectors, training"
    )
    stream_plugins: list[str] = Field(
        default_factory=list, description="`module:attribute` of Stream objects to add to the catalog"
    )
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    redis_prefix: str = Field("fleetwatch:", description="namespace of every Redis key and channel fleetwatch uses")
    registry_key: SecretStr | None = Field(None, description="HMAC key that signs model versions")
    registry_key_file: Path | None = Field(None, description="file holding the signing key (a mounted secret)")
    artifact_store: str = Field("redis", pattern="^(redis|file)$", description="where artifact bytes live")
    artifact_dir: Path = Field(Path(".fleetwatch/artifacts"), description="the file store's folder")
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = Field("INFO", pattern="(?i)^(debug|info|warning|error|critical)$")

    @model_validator(mode="after")
    def _streams_from_the_catalog(self) -> FleetwatchSettings:
        """Every configured or served stream exists; each gets its defaults where the config is silent."""
        load_plugins(self.stream_plugins)
        for name in {*self.streams, *self.worker.streams}:
            if name not in CATALOG:
                raise ValueError(f"unknown stream {name!r}; known streams: {', '.join(sorted(CATALOG))}")
        self.streams = {
            name: self.streams.get(name, StreamSettings()).completed(CATALOG[name])
            for name in sorted({*self.streams, *self.worker.streams})
        }
        return self

    def stream_settings(self, name: str) -> StreamSettings:
        """A stream's settings: as configured, or the catalog stream's defaults when the config names it nowhere
        (so `fleetwatch train --stream metrics` needs no config); FleetwatchError names the known streams."""
        if name in self.streams:
            return self.streams[name]
        return StreamSettings().completed(stream_named(name))

    def all_topics(self) -> list[str]:
        """Every topic the fleet reads or writes: the streams' input and summary topics and the shared ones."""
        per_stream = [topic for s in self.streams.values() for topic in (s.input_topic, s.summary_topic)]
        return [*per_stream, self.topics.alerts, self.topics.deadletter, self.topics.reports]

    def kafka_connection(self) -> KafkaConnection:
        return KafkaConnection(self.kafka_bootstrap, self.kafka_properties)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("FLEETWATCH_CONFIG", "fleetwatch.toml"))
        connection_file = dev_dir() / CONNECTION_FILE_NAME
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
            DotEnvSettingsSource(settings_cls, env_file=connection_file, env_prefix="FLEETWATCH_"),
        )


TOOL_VARIABLES = frozenset(
    {"FLEETWATCH_CONFIG", "FLEETWATCH_DEV_DIR", "FLEETWATCH_CACHE_DIR", "FLEETWATCH_REQUIRE_INTEGRATION"}
)
"""FLEETWATCH_* variables that are no setting: where the config file and the local stack's files are, and the test
suite's switch (`tests/conftest.py`)."""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """FLEETWATCH_* variables that name no setting, which pydantic ignores: a misspelt `FLEETWATCH_REDIS_ULR` is
    otherwise silently the default. (A misspelt key below a known one, `FLEETWATCH_WORKER__BATCH_SISE`, is refused.)

    >>> unknown_variables({"FLEETWATCH_REDIS_ULR": "x", "FLEETWATCH_WORKR__BATCH_SIZE": "1", "FLEETWATCH_CONFIG": "f"})
    ['FLEETWATCH_REDIS_ULR', 'FLEETWATCH_WORKR__BATCH_SIZE']
    """
    fields = {name.upper() for name in FleetwatchSettings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith("FLEETWATCH_")
        and name.upper() not in TOOL_VARIABLES
        and name.upper().removeprefix("FLEETWATCH_").split("__")[0] not in fields
    )


def load_settings(**overrides: Any) -> FleetwatchSettings:
    """Settings from every source; `overrides` are CLI flags (None means 'not given')."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return FleetwatchSettings(**given)


def topic_environment(topics: Mapping[str, str], stream: str = "transactions") -> dict[str, str]:
    """Environment variables that point a fleetwatch process at these topics, by role: `input` and
    `summary` (the stream's own), `alerts`, `deadletter`, `reports` (shared). For tests and benchmarks.

    >>> topic_environment({"input": "in.t", "alerts": "a.t"})
    {'FLEETWATCH_STREAMS__TRANSACTIONS__INPUT_TOPIC': 'in.t', 'FLEETWATCH_TOPICS__ALERTS': 'a.t'}
    """
    per_stream = {"input": "INPUT_TOPIC", "summary": "SUMMARY_TOPIC"}
    return {
        f"FLEETWATCH_STREAMS__{stream.upper()}__{per_stream[role]}"
        if role in per_stream
        else f"FLEETWATCH_TOPICS__{role.upper()}": name
        for role, name in topics.items()
    }
