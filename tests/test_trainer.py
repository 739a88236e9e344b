"""Training rounds on real Redis (and Kafka): publish, gate, failures publish nothing, the service loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import numpy as np
import pytest
import redis

from shared.config import DetectorConfig, FleetwatchSettings, StreamSettings
from shared.errors import FleetwatchError
from shared.event_files import labels_path_for
from shared.http_endpoints import scrape_metrics
from shared.kafka_client import KafkaConnection, produce_all, producer
from shared.local_infra.processes import free_port
from shared.output_records import Source, SummaryRecord
from shared.registry import ModelRegistry, open_registry
from shared.streams.transactions.files import transaction_payloads, write_labels, write_transactions
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import ANOMALY_KINDS, GeneratorSpec, generate_transactions
from workers.trainer import TrainingSource, request_key, request_round, run_round

SMALL = [
    DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 25, "random_state": 0}),
    DetectorConfig(name="autoencoder", kind="autoencoder", params={"max_iter": 30, "random_state": 0}),
]
WEAK = [
    DetectorConfig(
        name="tiny", kind="isolation_forest", params={"n_estimators": 1, "max_samples": 4, "random_state": 3}
    )
]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = generate_transactions(GeneratorSpec(users=800, events=8_000, anomaly_rate=0.03, seed=21))
    path = tmp_path_factory.mktemp("train") / "events.jsonl"
    write_transactions(data, path)
    write_labels(data, labels_path_for(path))
    return path


def settings_for(redis_url: str, prefix: str, detectors: list[DetectorConfig], **stream: object) -> FleetwatchSettings:
    return FleetwatchSettings(
        redis_url=redis_url,
        redis_prefix=prefix,
        registry_key="test-key-0123456789abcdef",  # type: ignore[arg-type]
        streams={"transactions": StreamSettings(detectors=detectors, **stream)},  # type: ignore[arg-type]
    )


def service_environment(redis_url: str, prefix: str) -> dict[str, str]:
    """What `settings_for` holds, as the environment of a `fleetwatch` process (JSON logs)."""
    return {
        **os.environ,
        "FLEETWATCH_REDIS_URL": redis_url,
        "FLEETWATCH_REDIS_PREFIX": prefix,
        "FLEETWATCH_REGISTRY_KEY": "test-key-0123456789abcdef",
        "FLEETWATCH_STREAMS": json.dumps({"transactions": {"detectors": [d.model_dump() for d in SMALL]}}),
        "FLEETWATCH_LOG_FORMAT": "json",
    }


@pytest.fixture
def settings(redis_server, unique_name: str) -> FleetwatchSettings:  # type: ignore[no-untyped-def]
    return settings_for(redis_server.url, f"{unique_name}:", SMALL)


def file_source(path: Path) -> TrainingSource:
    return TrainingSource(files=[str(path)], labels=str(labels_path_for(path)))


def test_round_publishes_and_deploys_an_evaluated_version(settings: FleetwatchSettings, events_file: Path) -> None:
    registry = open_registry(settings)
    outcome = run_round(settings, registry, "transactions", file_source(events_file))
    assert outcome.deployed and registry.deployed_version("transactions") == outcome.manifest.version == 1
    evaluation = registry.manifest("transactions", 1).evaluation
    assert evaluation is not None and set(evaluation["detectors"]) == {"iforest", "autoencoder"}
    assert 0.0 <= evaluation["fleet"]["roc_auc"] <= 1.0 and evaluation["weakest_detector"] in evaluation["detectors"]
    assert registry.load("transactions", 1).detector_names == ["iforest", "autoencoder"]
    # The labels name kinds: the fleet's recall per kind, over all anomalies and those of users with history.
    by_kind, fleet = evaluation["by_kind"], evaluation["fleet"]
    assert set(by_kind) == {*ANOMALY_KINDS, "all kinds"}
    assert sum(by_kind[kind]["anomalies"] for kind in ANOMALY_KINDS) == by_kind["all kinds"]["anomalies"]
    assert by_kind["all kinds"]["anomalies"] == fleet["true_positives"] + fleet["false_negatives"]
    assert by_kind["all kinds"]["caught"] == fleet["true_positives"]
    assert 0 < by_kind["all kinds"]["with_history"] < by_kind["all kinds"]["anomalies"]


def test_quality_gate_refuses_a_worse_candidate_and_the_pointer_stays(
    settings: FleetwatchSettings, events_file: Path
) -> None:
    registry = open_registry(settings)
    good = run_round(settings, registry, "transactions", file_source(events_file))
    worse_settings = settings_for(
        settings.redis_url, settings.redis_prefix, WEAK, gate_margin=0.0, shadow_floor_auc=0.0
    )
    worse = run_round(worse_settings, registry, "transactions", file_source(events_file))
    assert not worse.gate.accepted and not worse.deployed
    assert registry.deployed_version("transactions") == good.manifest.version
    assert "gate: fleet f1" in registry.manifest("transactions", worse.manifest.version).note


def test_labels_whose_evaluation_part_cannot_compare_publish_without_deploying(
    settings: FleetwatchSettings, events_file: Path, tmp_path: Path
) -> None:
    registry = open_registry(settings)
    deployed = run_round(settings, registry, "transactions", file_source(events_file))
    times = [json.loads(line)["timestamp"] for line in events_file.read_text().splitlines()]
    late = sorted(times)[int(len(times) * 0.8)]  # the evaluation part is the latest 15 %
    clean_late = tmp_path / "clean_late.labels.jsonl"
    with clean_late.open("w") as out:
        for line, time_ in zip(labels_path_for(events_file).read_text().splitlines(), times, strict=True):
            label = json.loads(line)
            out.write(json.dumps(label | {"is_anomaly": label["is_anomaly"] and time_ < late}) + "\n")
    source = TrainingSource(files=[str(events_file)], labels=str(clean_late))
    outcome = run_round(settings, registry, "transactions", source)
    assert outcome.result.evaluation is None and not outcome.gate.accepted and not outcome.deployed
    assert registry.deployed_version("transactions") == deployed.manifest.version
    note = registry.manifest("transactions", outcome.manifest.version).note
    assert "0 anomalies) needs normal and anomalous events to compare with deployed v1" in note
    assert "fleetwatch models promote <this version> --stream transactions" in note


def test_a_rollback_during_a_round_stays_and_the_candidate_is_published_without_deploying(
    settings: FleetwatchSettings, events_file: Path
) -> None:
    registry, source = open_registry(settings), TrainingSource(files=[str(events_file)])
    for _ in range(2):
        run_round(settings, registry, "transactions", source)
    assert registry.deployed_version("transactions") == 2

    def operator_rolls_back_after_the_gate(stage: str) -> None:
        if stage == "publishing":
            open_registry(settings).rollback("transactions")

    outcome = run_round(settings, registry, "transactions", source, on_stage=operator_rolls_back_after_the_gate)
    assert outcome.gate.accepted and not outcome.deployed
    assert registry.deployed_version("transactions") == 1, "the operator's rollback stays"
    note = registry.manifest("transactions", 3).note
    assert "not deployed: the deployed version moved away from v2, which it was compared with" in note
    assert "fleetwatch models promote 3 --stream transactions" in note


def test_failed_round_publishes_nothing(settings: FleetwatchSettings, tmp_path: Path) -> None:
    data = generate_transactions(GeneratorSpec(users=5, events=20, seed=2))
    tiny = tmp_path / "tiny.jsonl"
    write_transactions(data, tiny)
    registry = open_registry(settings)
    with pytest.raises(FleetwatchError, match="too few"):
        run_round(settings, registry, "transactions", TrainingSource(files=[str(tiny)]))
    assert registry.version_numbers("transactions") == []


def test_round_reads_a_kafka_topic(
    settings: FleetwatchSettings, kafka: KafkaConnection, make_topic, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("training")
    data = generate_transactions(GeneratorSpec(users=300, events=3_000, seed=5))
    assert produce_all(kafka, topic, data.columns["user_id"].tolist(), transaction_payloads(data, 0, len(data))) == 0
    write_labels(data, tmp_path / "labels.jsonl")
    settings = settings.model_copy(update={"kafka_bootstrap": kafka.bootstrap})
    registry = open_registry(settings)
    outcome = run_round(
        settings, registry, "transactions", TrainingSource(topic=topic, labels=str(tmp_path / "labels.jsonl"))
    )
    assert outcome.manifest.training.source == f"kafka:{topic}"
    info = outcome.manifest.training
    assert info.rows_train + info.rows_calibration + info.rows_evaluation <= 3_000
    assert info.window_start is not None and info.window_start < (info.window_end or "")


def test_round_reads_the_summary_topic_of_records_judged_normal(
    settings: FleetwatchSettings,
    kafka: KafkaConnection,
    make_topic,  # type: ignore[no-untyped-def]
) -> None:
    topic = make_topic("summary")
    data = generate_transactions(GeneratorSpec(users=300, events=3_000, seed=6))
    wrapped = [
        msgspec.json.encode(
            SummaryRecord(stream="transactions", model_version=1, scores={"iforest": 0.1},
                          source=Source(topic="events", partition=0, offset=i), scored_at="", event=msgspec.Raw(p))
        )
        for i, p in enumerate(transaction_payloads(data, 0, len(data)))
    ]  # fmt: skip
    assert produce_all(kafka, topic, data.columns["user_id"].tolist(), wrapped) == 0
    settings = settings.model_copy(update={"kafka_bootstrap": kafka.bootstrap})
    outcome = run_round(settings, open_registry(settings), "transactions", TrainingSource(topic=topic))
    info = outcome.manifest.training
    assert info.source == f"kafka:{topic}" and info.rows_train + info.rows_calibration == 3_000


def test_events_written_in_kafka_transactions_are_read_to_the_end_promptly(
    kafka: KafkaConnection,
    make_topic,  # type: ignore[no-untyped-def]
) -> None:
    from shared.training_data import from_topic

    topic = make_topic("transactional", partitions=2)
    data = generate_transactions(GeneratorSpec(users=100, events=600, seed=8))
    keys, payloads = data.columns["user_id"].tolist(), transaction_payloads(data, 0, len(data))
    writer = producer(kafka, **{"transactional.id": f"writer-{topic}"})
    writer.init_transactions(30)
    for commit in (False, True):  # an aborted transaction, then the one a read_committed reader sees
        writer.begin_transaction()
        for key, payload in zip(keys, payloads, strict=True):
            writer.produce(topic, value=payload, key=key)
        writer.commit_transaction(30) if commit else writer.abort_transaction(30)
    started = time.monotonic()
    read = from_topic(TRANSACTIONS, kafka, topic, None, 1.0, 10**6, timeout_s=30)
    assert len(read.columns) == 600, "the aborted transaction's records are not read"
    assert time.monotonic() - started < 15, "the end is the last stable offset, behind the commit marker"


def test_sampling_keeps_whole_users(settings: FleetwatchSettings, events_file: Path) -> None:
    from shared.training_data import from_files

    half = from_files(TRANSACTIONS, [events_file], None, sample_rate=0.5, max_rows=10**9)
    everything = from_files(TRANSACTIONS, [events_file], None, sample_rate=1.0, max_rows=10**9)
    kept_users = set(half.columns.entity.tolist())
    assert 0.3 < len(kept_users) / len(set(everything.columns.entity.tolist())) < 0.7
    per_user_all = {u: int((everything.columns.entity == u).sum()) for u in kept_users}
    assert all(int((half.columns.entity == u).sum()) == count for u, count in per_user_all.items())
    assert np.all(np.diff(half.columns.event_time_s) >= 0)


def test_trainer_service_trains_on_schedule_and_on_request_then_stops_on_sigterm(
    redis_server,
    unique_name: str,
    events_file: Path,  # type: ignore[no-untyped-def]
) -> None:
    prefix, port = f"{unique_name}:", free_port()
    stream = {"detectors": [d.model_dump() for d in SMALL], "train_interval_s": 3600}
    env = {
        **os.environ,
        "FLEETWATCH_REDIS_URL": redis_server.url,
        "FLEETWATCH_REDIS_PREFIX": prefix,
        "FLEETWATCH_REGISTRY_KEY": "test-key-0123456789abcdef",
        "FLEETWATCH_STREAMS": json.dumps({"transactions": stream}),
        "FLEETWATCH_LOG_FORMAT": "json",
    }
    command = [str(Path(sys.executable).with_name("fleetwatch")), "trainer", "--file", str(events_file),
               "--labels", str(labels_path_for(events_file)), "--metrics-port", str(port)]  # fmt: skip
    service = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = redis.Redis.from_url(redis_server.url)
    registry = ModelRegistry(client, None, b"", prefix)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 120
        while registry.version_numbers("transactions") != [1] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registry.version_numbers("transactions") == [1], "the scheduled first round did not publish"
        request_round(settings_for(redis_server.url, prefix, SMALL), "transactions", file_source(events_file))
        while len(registry.version_numbers("transactions")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registry.version_numbers("transactions") == [1, 2], "the requested round did not publish"
        published = 'fleetwatch_training_runs_total{result="published",stream="transactions"} 2.0'
        while published not in scrape_metrics(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert published in scrape_metrics(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    assert service.returncode == 0, stderr
    assert '"trainer stopped"' in stderr


def test_a_requested_round_keeps_no_deploy_and_reads_relative_paths_from_where_it_was_asked(
    redis_server,  # type: ignore[no-untyped-def]
    unique_name: str,
    events_file: Path,
    tmp_path: Path,
) -> None:
    prefix, port = f"{unique_name}:", free_port()
    env = service_environment(redis_server.url, prefix)
    fleetwatch = str(Path(sys.executable).with_name("fleetwatch"))
    relative = [events_file.name, "--labels", labels_path_for(events_file).name]
    asked = subprocess.run(
        [fleetwatch, "train", "--request", "--no-deploy", *relative],
        env=env, cwd=events_file.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    (tmp_path / "service").mkdir()
    # The service runs elsewhere; its scheduled round reads a file that does not exist and publishes nothing.
    command = [fleetwatch, "trainer", "--file", "absent.jsonl", "--metrics-port", str(port)]
    service = subprocess.Popen(
        command, env=env, cwd=tmp_path / "service", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    registry = open_registry(settings_for(redis_server.url, prefix, SMALL))
    try:
        deadline = time.monotonic() + 120
        while registry.version_numbers("transactions") != [1] and time.monotonic() < deadline:
            assert service.poll() is None, "the trainer ended"
            time.sleep(0.2)
        assert registry.version_numbers("transactions") == [1], "the requested round did not publish"
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    assert service.returncode == 0, stderr
    assert registry.manifest("transactions", 1).training.source == f"file:{events_file}"
    assert registry.deployed_version("transactions") is None, "--no-deploy: published, the pointer not moved"


def test_trainer_service_drops_malformed_requests_and_survives_a_crashing_round(
    redis_server,  # type: ignore[no-untyped-def]
    unique_name: str,
    events_file: Path,
    tmp_path: Path,
) -> None:
    prefix, port = f"{unique_name}:", free_port()
    settings = settings_for(redis_server.url, prefix, SMALL)
    client = redis.Redis.from_url(redis_server.url)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not a parquet file")  # pyarrow raises ArrowInvalid: no error the round expects
    # Queued before the service starts: it reads them in this order, before its scheduled round.
    client.rpush(request_key(settings), b"{not json", b'{"stream": "transactions"}', b'{"stream": "x", "source": {}}')
    request_round(settings, "transactions", TrainingSource(files=[str(corrupt)]))
    request_round(settings, "transactions", file_source(events_file))
    env = service_environment(redis_server.url, prefix)
    # The scheduled round reads a file that does not exist: only the valid request can publish.
    command = [str(Path(sys.executable).with_name("fleetwatch")), "trainer", "--file", str(tmp_path / "absent.jsonl"),
               "--metrics-port", str(port)]  # fmt: skip
    service = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    registry = open_registry(settings)
    try:
        deadline = time.monotonic() + 120
        while registry.version_numbers("transactions") != [1] and time.monotonic() < deadline:
            assert service.poll() is None, "the trainer ended"
            time.sleep(0.2)
        assert registry.version_numbers("transactions") == [1], "the valid request after the bad ones did not run"
        assert registry.manifest("transactions", 1).training.source == f"file:{events_file}"
        scraped = scrape_metrics(port)
        for kind in ("not_json", "wrong_shape", "unknown_stream"):
            assert f'fleetwatch_training_requests_rejected_total{{kind="{kind}"}} 1.0' in scraped
        assert 'fleetwatch_training_runs_total{result="crashed",stream="transactions"} 1.0' in scraped
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)
    assert service.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    rejected = [e for e in events if e["event"] == "training request rejected"]
    assert [e["kind"] for e in rejected] == ["not_json", "wrong_shape", "unknown_stream"]
    assert rejected[0]["request"] == "{not json" and rejected[0]["level"] == "warning"
    crashed = [e for e in events if e["event"] == "training round crashed; nothing published"]
    assert len(crashed) == 1 and "ArrowInvalid" in crashed[0]["exception"], "the log carries the traceback"
