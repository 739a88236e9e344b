"""Typed configuration in one place.

Precedence, highest first: CLI flags (passed as keyword arguments), environment variables
(`FLEETWATCH_*`, nested with `__`), the TOML config file (`FLEETWATCH_CONFIG`, default
`./fleetwatch.toml`), the connection file written by `fleetwatch dev up`, then defaults that run locally.
librdkafka properties (SASL, TLS, tuning) pass through unchanged in `kafka_properties`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
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

    def all(self) -> list[str]:
        return [
            self.transactions,
            self.logs,
            self.alerts,
            self.summary_transactions,
            self.summary_logs,
            self.deadletter,
        ]


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
