"""Settings precedence: flags > environment > config file > `dev up` connection file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import load_settings
from shared.errors import FleetwatchError
from shared.streams.metrics.stream import METRICS


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("FLEETWATCH_KAFKA_BOOTSTRAP", "FLEETWATCH_REDIS_URL", "FLEETWATCH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(tmp_path / "dev"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev").mkdir()
    return tmp_path


def test_defaults_point_at_the_local_dev_stack(isolated: Path) -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.streams["transactions"].input_topic == "events.transactions"
    assert settings.topics.deadletter == "deadletter"
    assert [d.name for d in settings.streams["transactions"].detectors] == [
        "iforest",
        "ocsvm",
        "autoencoder",
        "robust_z",
        "pca",
        "amount_vs_user",
        "hour_vs_user",
        "user_burst",
    ]
    assert [d.name for d in settings.streams["transactions"].detectors if d.specialist] == [
        "amount_vs_user",
        "hour_vs_user",
        "user_burst",
    ]


def test_each_source_overrides_the_ones_below_it(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "dev" / "connection.env").write_text(
        "FLEETWATCH_KAFKA_BOOTSTRAP=127.0.0.1:1111\nFLEETWATCH_REDIS_URL=redis://127.0.0.1:1112/0\n"
    )
    assert load_settings().kafka_bootstrap == "127.0.0.1:1111"

    (isolated / "fleetwatch.toml").write_text(
        'kafka_bootstrap = "file:2222"\n[topics]\nalerts = "fraud.alerts"\n'
        '[kafka_properties]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "SCRAM-SHA-512"\n'
    )
    settings = load_settings()
    assert settings.kafka_bootstrap == "file:2222" and settings.redis_url == "redis://127.0.0.1:1112/0"
    assert (
        settings.topics.alerts == "fraud.alerts"
        and settings.streams["transactions"].input_topic == "events.transactions"
    )

    monkeypatch.setenv("FLEETWATCH_STREAMS__TRANSACTIONS__SUMMARY_TOPIC", "normal.tx")
    stream = load_settings().streams["transactions"]
    assert stream.summary_topic == "normal.tx" and stream.input_topic == "events.transactions" and stream.detectors

    monkeypatch.setenv("FLEETWATCH_KAFKA_BOOTSTRAP", "env:3333")
    monkeypatch.setenv("FLEETWATCH_TOPICS__DEADLETTER", "dlq")
    settings = load_settings()
    assert settings.kafka_bootstrap == "env:3333" and settings.topics.deadletter == "dlq"

    assert load_settings(kafka_bootstrap="flag:4444", redis_url=None).kafka_bootstrap == "flag:4444"


def test_librdkafka_properties_pass_through_unchanged(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_KAFKA_PROPERTIES", '{"security.protocol": "SSL", "ssl.ca.location": "/ca.pem"}')
    config = load_settings().kafka_connection().config(**{"group.id": "g"})
    assert config["security.protocol"] == "SSL" and config["ssl.ca.location"] == "/ca.pem"
    assert config["group.id"] == "g" and config["bootstrap.servers"] == "127.0.0.1:19092"


def test_an_unknown_stream_is_refused_with_the_known_ones(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_WORKER__STREAMS", '["weather"]')
    with pytest.raises(ValidationError, match=r"unknown stream 'weather'; known streams: .*transactions"):
        load_settings()


def test_a_misspelt_key_is_refused_not_silently_a_default(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "fleetwatch.toml").write_text('kafka_bootstrap = "file:2222"\n[summarizer.rate]\nmin_alert = 5\n')
    with pytest.raises(ValidationError, match=r"summarizer\.rate\.min_alert\s+Extra inputs are not permitted"):
        load_settings()
    (isolated / "fleetwatch.toml").write_text('kafka_bootstrap = "file:2222"\nkafka_bootstap = "typo:1"\n')
    with pytest.raises(ValidationError, match=r"kafka_bootstap\s+Extra inputs are not permitted"):
        load_settings()
    (isolated / "fleetwatch.toml").unlink()
    monkeypatch.setenv("FLEETWATCH_WORKER__BATCH_SISE", "10")
    with pytest.raises(ValidationError, match=r"worker\.batch_sise\s+Extra inputs are not permitted"):
        load_settings()
    monkeypatch.delenv("FLEETWATCH_WORKER__BATCH_SISE")
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(isolated / "dev"))  # not a setting: the tools' own variables pass
    assert load_settings().kafka_bootstrap == "127.0.0.1:19092"


def test_a_batch_minimum_above_the_batch_size_is_refused(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_WORKER__BATCH_SIZE", "100")
    monkeypatch.setenv("FLEETWATCH_WORKER__BATCH_MIN_SIZE", "101")
    with pytest.raises(ValidationError, match=r"batch_min_size \(101\) is above batch_size \(100\)"):
        load_settings()
    monkeypatch.setenv("FLEETWATCH_WORKER__BATCH_MIN_SIZE", "100")
    assert load_settings().worker.batch_min_size == 100


def test_a_summarizer_session_timeout_below_the_brokers_minimum_is_refused(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_SUMMARIZER__SESSION_TIMEOUT_S", "5")
    with pytest.raises(ValidationError, match=r"session_timeout_s\s+Input should be greater than or equal to 6"):
        load_settings()
    monkeypatch.setenv("FLEETWATCH_SUMMARIZER__SESSION_TIMEOUT_S", "6")
    assert load_settings().summarizer.session_timeout_s == 6.0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WINDOW_SIZES_S": "[0]"}, r"window_sizes_s must be distinct and positive; got \[0\]"),
        ({"WINDOW_SIZES_S": "[60, 60]"}, r"window_sizes_s must be distinct and positive"),
        ({"RATE__WINDOW_S": "300"}, r"rate.window_s \(300\) is none of window_sizes_s \[60, 3600\]"),
        ({"RATE__BASELINE_MIN_WINDOWS": "11"}, r"baseline_min_windows \(11\) is above baseline_windows \(10\)"),
    ],
)
def test_summarizer_windows_that_could_never_report_or_alert_are_refused(
    variables: dict[str, str], message: str, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"FLEETWATCH_SUMMARIZER__{name}", value)
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_a_precision_floor_is_read_per_stream_and_must_be_a_share(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_STREAMS", '{"transactions": {"precision_floor": 0.8}}')
    assert load_settings().streams["transactions"].precision_floor == 0.8
    monkeypatch.setenv("FLEETWATCH_STREAMS", '{"transactions": {"precision_floor": 80}}')
    with pytest.raises(ValidationError, match=r"precision_floor\s+Input should be less than 1"):
        load_settings()


def test_a_stream_the_config_never_names_takes_the_catalogs_defaults(isolated: Path) -> None:
    settings = load_settings()
    assert "metrics" not in settings.streams
    metrics = settings.stream_settings("metrics")
    assert metrics.input_topic == "events.metrics"
    assert [d.name for d in metrics.detectors] == [d["name"] for d in METRICS.default_detectors]
    with pytest.raises(FleetwatchError, match=r"unknown stream 'weather'; known streams: .*metrics"):
        settings.stream_settings("weather")


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ({"quantile": 1.0}, r"quantile must be in \(0, 1\), got 1.0"),
        ({"target_fpr": 0}, r"target_fpr must be in \(0, 1\), got 0"),
        ({"std_multiplier": -1}, r"std_multiplier must be a finite number >= 0, got -1"),
        ({"moving_average_window": 0}, r"moving_average_window must be an int >= 1, got 0"),
        ({"detectors": [{"name": "a", "kind": "hbos"}]}, r"detector 'a': unknown detector kind 'hbos'; valid kinds"),
        (
            {"detectors": [{"name": "a", "kind": "isolation_forest", "params": {"n_trees": 3}}]},
            r"detector 'a': isolation_forest detector has no parameter 'n_trees'",
        ),
        (
            {"detectors": [{"name": "a", "kind": "isolation_forest", "params": {"n_estimators": -3}}]},
            r"detector 'a': The 'n_estimators' parameter of IsolationForestDetector must be an int",
        ),
        (
            {"detectors": [{"name": "a", "kind": "isolation_forest"}, {"name": "a", "kind": "robust_zscore"}]},
            r"detector names must be unique within a stream; repeated: a",
        ),
    ],
)
def test_stream_settings_a_training_round_would_fail_on_are_refused_when_settings_load(
    stream: dict[str, object], message: str, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_STREAMS", json.dumps({"transactions": stream}))
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_a_trusted_proxy_network_with_host_bits_is_refused_with_the_network_meant(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_CONSOLE__TRUSTED_PROXIES", '["10.0.0.1/8"]')
    with pytest.raises(ValidationError, match=r"10\.0\.0\.1/8 has host bits set; did you mean 10\.0\.0\.0/8\?"):
        load_settings()
    monkeypatch.setenv("FLEETWATCH_CONSOLE__TRUSTED_PROXIES", '["10.42.7.0/24", "192.0.2.10"]')
    assert [str(n) for n in load_settings().console.trusted_proxies] == ["10.42.7.0/24", "192.0.2.10/32"]
