"""Typed configuration in one place.

Precedence, highest first: CLI flags (passed as keyword arguments), environment variables
(`FLEETWATCH_*`, nested with `__`), the TOML config file (`FLEETWATCH_CONFIG`, default
`./fleetwatch.toml`), the connection file written by `fleetwatch dev up`, then defaults that run locally.
librdkafka properties (SASL, TLS, tuning) pass through unchanged in `kafka_properties`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.kafka_client import KafkaConnection

DEV_DIR_NAME = ".fleetwatch"
CONNECTION_FILE_NAME = "connection.env"


def dev_dir() -> Path:
    """The one project-local folder that holds the local stack's data (removed by `dev down --purge`)."""
    return Path(os.environ.get("FLEETWATCH_DEV_DIR", DEV_DIR_NAME)).resolve()


def cache_dir() -> Path:
    """Downloads (Kafka jars, Maven repository) that survive `dev down --purge`."""
    return Path(os.environ.get("FLEETWATCH_CACHE_DIR", ".cache")).resolve()


class TopicNames(BaseModel):
    transactions: str = "events.transactions"
    logs: str = "events.logs"
    alerts: str = "alerts"
    summary_transactions: str = "summary.transactions"
    summary_logs: str = "summary.logs"
    deadletter: str = "deadletter"
    reports: str = "reports.summary"

    def all(self) -> list[str]:
        return [
            self.transactions,
            self.logs,
            self.alerts,
            self.summary_transactions,
            self.summary_logs,
            self.deadletter,
            self.reports,
        ]


class DetectorConfig(BaseModel):
    """One entry of a stream's `model_configs` (seed 000): a name, a detector kind and its parameters."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


def _default_detectors() -> list[DetectorConfig]:
    return [
        # Fixed seeds: the same data and configuration give the same version.
        DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 100, "random_state": 0}),
        DetectorConfig(name="ocsvm", kind="ocsvm", params={"random_state": 0}),
        DetectorConfig(name="autoencoder", kind="autoencoder", params={"random_state": 0}),
        DetectorConfig(name="robust_z", kind="robust_zscore"),
    ]


class StreamSettings(BaseModel):
    """How one stream's models are trained, thresholded, gated and sampled."""

    detectors: list[DetectorConfig] = Field(default_factory=_default_detectors)
    std_multiplier: float = 6.0
    quantile: float = 0.95
    target_fpr: float = 0.01
    fleet_fpr_budget: float = Field(
        0.0005, gt=0, lt=1, description="false-positive budget of the any-detector rule on held-out normal data"
    )
    moving_average_window: int = 50
    gate_metric: Literal["f1", "roc_auc"] = "f1"
    gate_margin: float = Field(0.02, ge=0, description="how far below the deployed version a candidate may fall")
    shadow_floor_auc: float = Field(0.85, description="a detector below this ROC AUC is deployed in shadow mode")
    shadow_floor_pr_auc_share: float = Field(
        0.5, ge=0, le=1, description="...or one whose PR AUC is below this share of the best detector's"
    )
    exclude_labelled_anomalies: bool = True
    sample_rate: float = Field(1.0, gt=0, le=1)
    max_rows: int = Field(1_000_000, gt=0)
    window_hours: float | None = Field(None, gt=0, description="train on the last N hours of the topic")
    train_interval_s: float = Field(3600.0, gt=0)
    batch_alert_rate: float = Field(0.02, gt=0, lt=1, description="a batch whose anomaly rate passes this alerts")


def _default_streams() -> dict[str, StreamSettings]:
    return {"transactions": StreamSettings()}


class WorkerSettings(BaseModel):
    """The scoring workers: which streams, how they batch, and the delivery guarantee."""

    streams: list[str] = Field(default_factory=lambda: ["transactions"])
    group_id: str = "fleetwatch-scorers"
    delivery: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: outputs and offsets commit in one Kafka transaction per batch; "
        "at_least_once: produce, flush, then commit offsets (faster; a crash may repeat a batch's outputs)",
    )
    batch_size: int = Field(1000, gt=0, description="most records per micro-batch")
    batch_timeout_s: float = Field(0.05, gt=0, description="longest wait to fill a micro-batch")
    reconcile_interval_s: float = Field(5.0, gt=0, description="how often the deployed pointers are re-read")
    shutdown_timeout_s: float = Field(20.0, gt=0, description="bound on a graceful stop after SIGTERM")
    metrics_port: int = 9400
    profile_ttl_days: int = 90
    top_features: int = 3
    consumer_properties: dict[str, str] = Field(default_factory=dict, description="librdkafka, consumer only")
    producer_properties: dict[str, str] = Field(default_factory=dict, description="librdkafka, producer only")


class RateCriterion(BaseModel):
    """Seed 000's batch check at stream level, and the per-entity burst limit."""

    window_s: int | None = Field(None, gt=0, description="window size the criteria apply to (default: smallest)")
    min_alerts: int = Field(100, gt=0, description="a stream window with at least this many alerts raises")
    baseline_multiple: float = Field(3.0, gt=1, description="...or an anomaly rate above this times the baseline")
    baseline_windows: int = Field(10, gt=0, description="the baseline is the mean rate of this many past windows")
    baseline_min_windows: int = Field(3, gt=0, description="no relative criterion before this many windows")
    entity_max_alerts: int = Field(5, gt=0, description="more alerts than this for one user in a window escalate")


class SummarizerSettings(BaseModel):
    """The faust summarizer: windows over the summary and alert topics, reports to `topics.reports`."""

    app_id: str = Field("fleetwatch-summarizer", description="faust app id: consumer group and internal topic prefix")
    window_sizes_s: list[int] = Field(default_factory=lambda: [60, 3600], min_length=1)
    allowed_lateness_s: float = Field(5.0, ge=0, description="how long after its end a window still takes events")
    partitions: int = Field(6, gt=0, description="partitions of the internal partials topic and the changelog")
    batch_size: int = Field(1000, gt=0, description="most records folded into one partial aggregate")
    batch_timeout_s: float = Field(0.5, gt=0, description="longest wait to fill that batch")
    commit_interval_s: float = Field(1.0, gt=0, description="how often consumed offsets are committed")
    shutdown_timeout_s: float = Field(20.0, gt=0, description="bound on a graceful stop after SIGTERM")
    reports_file: Path | None = Field(None, description="also append every window report here, one JSON line each")
    metrics_port: int = 9400
    rate: RateCriterion = Field(default_factory=RateCriterion)


class DevStackSettings(BaseModel):
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
        extra="ignore",
    )

    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    kafka_properties: dict[str, str] = Field(
        default_factory=dict, description="librdkafka properties passed through unchanged"
    )
    topics: TopicNames = Field(default_factory=TopicNames)
    dev: DevStackSettings = Field(default_factory=DevStackSettings)
    streams: dict[str, StreamSettings] = Field(default_factory=_default_streams)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings)
    redis_prefix: str = Field("fleetwatch:", description="namespace of every Redis key and channel fleetwatch uses")
    registry_key: SecretStr | None = Field(None, description="HMAC key that signs model versions")
    registry_key_file: Path | None = Field(None, description="file holding the signing key (a mounted secret)")
    artifact_store: str = Field("redis", pattern="^(redis|file)$", description="where artifact bytes live")
    artifact_dir: Path = Field(Path(".fleetwatch/artifacts"), description="the file store's folder")
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = "INFO"

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


def load_settings(**overrides: Any) -> FleetwatchSettings:
    """Settings from every source; `overrides` are CLI flags (None means 'not given')."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return FleetwatchSettings(**given)
