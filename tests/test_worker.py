"""Scoring workers as separate processes on the real broker and Redis: routing, reload, crashes, shutdown."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import TopicPartition

from shared.artifact_store import RedisArtifactStore
from shared.config import DetectorConfig, StreamSettings
from shared.http_endpoints import scrape_metrics
from shared.kafka_client import KafkaConnection, consumer, producer, topic_partitions
from shared.local_infra.redis_server import RedisServer
from shared.output_records import AlertRecord, decode_output
from shared.registry import ModelRegistry
from shared.scoring import score_batch
from shared.streams.transactions.contract import decode_transactions
from shared.streams.transactions.features import TransactionColumns, advance_profiles
from shared.streams.transactions.profiles import empty_profiles
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import TrainingData, TrainingResult, train_round
from tests.fleet import QUICK_FAILOVER, Fleet, event_ids, labelled_stream, open_fleet, produce_paced, wait_until

DETECTORS = [
    DetectorConfig(name="iforest", kind="isolation_forest", params={"n_estimators": 30, "random_state": 0}),
    DetectorConfig(name="robust_z", kind="robust_zscore"),
]
MALFORMED = [b"not json", b'{"event_id": "x"}', b'{"event_id":"y","amount":-1}', b"\xff\xfe"]


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    data = generate_transactions(GeneratorSpec(users=600, events=6_000, anomaly_rate=0.03, seed=31))
    c = data.columns
    columns = TransactionColumns.from_arrays(
        user_id=c["user_id"], amount=c["amount"], timestamp_s=c["timestamp_ms"] / 1000.0, ip=c["ip"],
        transaction_type=c["transaction_type"], channel=c["channel"], segment=c["segment"],
    )  # fmt: skip
    settings = StreamSettings(detectors=DETECTORS, fleet_fpr_budget=0.02, shadow_floor_auc=0.0)
    return train_round(TrainingData(columns, data.is_anomaly, "test"), settings, TRANSACTIONS, None)


@pytest.fixture
def fleet(kafka: KafkaConnection, redis_server: RedisServer, unique_name: str, tmp_path: Path) -> Iterator[Fleet]:
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        yield fleet


def offline_alert_ids(trained: TrainingResult, registry: ModelRegistry, payloads: list[bytes]) -> set[str]:
    """What the deployed detectors flag when the same events are featurized in one pass."""
    version = registry.load_deployed("transactions")
    assert version is not None
    events = decode_transactions(payloads).events
    raw, _ = advance_profiles(empty_profiles(), TransactionColumns.from_events(events))
    flagged = score_batch(version, raw).alert
    return {event.event_id for event, alert in zip(events, flagged.tolist(), strict=True) if alert}


def test_every_input_lands_once_in_exactly_one_place(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    payloads, keys = labelled_stream(3_000, seed=41)
    mixed = payloads[:1000] + MALFORMED + payloads[1000:]
    mixed_keys = keys[:1000] + ["bad"] * len(MALFORMED) + keys[1000:]
    fleet.produce(mixed, mixed_keys)
    fleet.start_worker()
    outputs = fleet.wait_for_outputs(len(mixed))

    alerts, summaries = event_ids(outputs["alerts"]), event_ids(outputs["summary"])
    assert len(alerts) + len(summaries) + len(outputs["deadletter"]) == len(mixed)
    assert sorted(alerts + summaries) == sorted(msgspec.json.decode(p)["event_id"] for p in payloads)
    assert set(alerts) == offline_alert_ids(trained, fleet.registry, payloads)
    assert 0 < len(alerts) < len(payloads) / 5

    dead = sorted(outputs["deadletter"], key=lambda r: MALFORMED.index(r.value()))
    assert [r.value() for r in dead] == MALFORMED
    headers = dict(dead[0].headers())
    assert (
        headers["fleetwatch.error.kind"] == b"not_json"
        and headers["fleetwatch.source.topic"] == fleet.topics["input"].encode()
    )
    first_alert = decode_output(outputs["alerts"][0].value())
    assert first_alert.model_version == 1 and first_alert.fired and len(first_alert.standout_features) == 3
    assert first_alert.source.topic == fleet.topics["input"]


@contextmanager
def steady_traffic(fleet: Fleet, seed: int) -> Iterator[None]:
    """About 5,000 events/s while the block runs (cycling through one generated set: ids repeat, which is
    fine for these tests)."""
    payloads, keys = labelled_stream(20_000, seed=seed)
    stop = threading.Event()

    def run() -> None:
        writer = producer(fleet.kafka)
        start = 0
        while not stop.is_set():
            for payload, key in zip(payloads[start : start + 100], keys[start : start + 100], strict=True):
                writer.produce(fleet.topics["input"], value=payload, key=key)
            writer.poll(0)
            start = (start + 100) % len(payloads)
            time.sleep(0.02)
        writer.flush(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def versions_by_partition(outputs: dict[str, list]) -> dict[int, list[tuple[int, int]]]:
    """(source offset, model version) of every scored output, per input partition, in offset order."""
    per_partition: dict[int, list[tuple[int, int]]] = {}
    for record in outputs["alerts"] + outputs["summary"]:
        decoded = decode_output(record.value())
        per_partition.setdefault(decoded.source.partition, []).append((decoded.source.offset, decoded.model_version))
    return {p: sorted(values) for p, values in per_partition.items()}


def first_output_time_of(fleet: Fleet, version: int) -> float | None:
    from datetime import datetime

    outputs = fleet.outputs()
    stamps = []
    for record in outputs["alerts"] + outputs["summary"]:
        decoded = decode_output(record.value())
        if decoded.model_version == version:
            text = decoded.detected_at if isinstance(decoded, AlertRecord) else decoded.scored_at
            stamps.append(datetime.fromisoformat(text).timestamp())
    return min(stamps) if stamps else None


def test_version_published_mid_stream_is_picked_up_within_a_second(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    fleet.start_worker()
    with steady_traffic(fleet, seed=42):
        assert wait_until(lambda: len(fleet.outputs()["summary"]) > 500, 60)
        published_at = time.time()
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        assert wait_until(lambda: first_output_time_of(fleet, 2) is not None, 30)
    first_v2 = first_output_time_of(fleet, 2)
    assert first_v2 is not None and first_v2 - published_at < 1.0
    for partition, sequence in versions_by_partition(fleet.outputs()).items():
        versions = [version for _, version in sequence]
        assert versions == sorted(versions), f"partition {partition} went back to an older version"
        assert set(versions) <= {1, 2}


def test_missed_notices_are_recovered_by_reconciliation(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    fleet.start_worker()
    with steady_traffic(fleet, seed=43):
        assert wait_until(lambda: len(fleet.outputs()["summary"]) > 200, 60)
        # A notice that never arrives: the pointer moves without one.
        fleet.registry.publish(trained.bundle, trained.draft, deploy=False)
        fleet.client.set(fleet.registry.keys.deployed("transactions"), 2)
        assert wait_until(lambda: first_output_time_of(fleet, 2) is not None, 15)
        # A subscriber cut off while the pointer moves: converges after it reconnects.
        fleet.registry.publish(trained.bundle, trained.draft, deploy=False)
        fleet.client.client_kill_filter(_type="pubsub")
        fleet.registry.promote("transactions", 3)
        assert wait_until(lambda: first_output_time_of(fleet, 3) is not None, 15)


@pytest.mark.parametrize("overlap_commit", ["false", "true"])
def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    fleet: Fleet, trained: TrainingResult, overlap_commit: str
) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    fleet.env["FLEETWATCH_WORKER__OVERLAP_COMMIT"] = overlap_commit  # both workers: killed and successor
    payloads, keys = labelled_stream(12_000, seed=44)
    first, _ = fleet.start_worker(FLEETWATCH_WORKER__BATCH_SIZE="100", **QUICK_FAILOVER)
    paced = threading.Thread(target=produce_paced, args=(fleet, payloads, keys, 4_000), daemon=True)
    paced.start()
    assert wait_until(lambda: len(fleet.outputs()["summary"]) > 1_000, 60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    scored_before_kill = sum(len(r) for r in fleet.outputs().values())
    assert scored_before_kill < len(payloads), "the kill came too late to test anything"
    fleet.start_worker(**QUICK_FAILOVER)
    paced.join()
    outputs = fleet.wait_for_outputs(len(payloads))
    ids = event_ids(outputs["alerts"]) + event_ids(outputs["summary"])
    duplicates = [event for event, count in Counter(ids).items() if count > 1]
    assert duplicates == [] and len(ids) == len(payloads)
    # Profiles were not double-counted by the replay: the alerts are exactly the one-pass ones.
    assert set(event_ids(outputs["alerts"])) == offline_alert_ids(trained, fleet.registry, payloads)


def test_sigterm_stops_cleanly_within_the_bound(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    worker, _ = fleet.start_worker()
    with steady_traffic(fleet, seed=45):
        assert wait_until(lambda: len(fleet.outputs()["summary"]) > 200, 60)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=25)
        stopped_in = time.monotonic() - started
    assert worker.returncode == 0 and '"worker stopped"' in fleet.log_of(worker)
    assert stopped_in < 20.0


def test_tampered_version_is_refused_while_scoring_goes_on(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    _, port = fleet.start_worker()
    fleet.registry.publish(trained.bundle, trained.draft, deploy=False)
    store = RedisArtifactStore(fleet.client, fleet.registry.keys.prefix)
    store.put("transactions", 2, store.get("transactions", 2)[:-10] + b"tampered!!")
    fleet.client.set(fleet.registry.keys.deployed("transactions"), 2)
    refused = 'fleetwatch_model_reloads_total{result="refused",stream="transactions"} 1.0'

    assert wait_until(lambda: refused in scrape_metrics(port), 15)
    payloads, keys = labelled_stream(500, seed=46)
    fleet.produce(payloads, keys)
    outputs = fleet.wait_for_outputs(len(payloads))
    versions = {decode_output(r.value()).model_version for r in outputs["summary"] + outputs["alerts"]}
    assert versions == {1} and sum(len(r) for r in outputs.values()) == len(payloads)
    assert 'fleetwatch_deployed_version{stream="transactions"} 1.0' in scrape_metrics(port)
    assert outputs["deadletter"] == []


def test_a_batch_waits_for_its_minimum_and_goes_as_soon_as_it_is_reached(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    fleet.start_worker(FLEETWATCH_WORKER__BATCH_MIN_SIZE="3", FLEETWATCH_WORKER__BATCH_TIMEOUT_S="300")
    payloads, keys = labelled_stream(3, seed=47)
    fleet.produce(payloads[:2], keys[:2])
    time.sleep(3)
    assert fleet.scored_count() == 0, "two records were scored before the minimum of three was there"
    fleet.produce(payloads[2:], keys[2:])
    # Well before the 300 s timeout: the third record completes the minimum.
    assert wait_until(lambda: fleet.scored_count() == 3, 30)


def test_at_least_once_commits_the_offsets_of_what_it_delivered(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    fleet.start_worker(FLEETWATCH_WORKER__DELIVERY="at_least_once")
    payloads, keys = labelled_stream(1_000, seed=48)
    fleet.produce(payloads, keys)
    fleet.wait_for_outputs(len(payloads))
    group = consumer(fleet.kafka, fleet.env["FLEETWATCH_WORKER__GROUP_ID"])
    try:
        partitions = [
            TopicPartition(fleet.topics["input"], p) for p in topic_partitions(fleet.kafka, fleet.topics["input"])
        ]
        ends = [group.get_watermark_offsets(p, timeout=10)[1] for p in partitions]

        def committed() -> list[int]:
            return [p.offset for p in group.committed(partitions, timeout=10)]

        # Asynchronous commits: they land shortly after the outputs, and cover every consumed record.
        assert wait_until(lambda: committed() == ends, 20), f"committed {committed()}, ends {ends}"
    finally:
        group.close()


def lag_partitions(port: int, topic: str) -> set[str]:
    """The partitions of `topic` whose consumer lag the worker on `port` reports."""
    series = [line for line in scrape_metrics(port).splitlines() if line.startswith("fleetwatch_consumer_lag_records{")]
    labels = [dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) for line in series]
    return {label["partition"] for label in labels if label["topic"] == topic}


def test_a_worker_stops_reporting_the_lag_of_partitions_it_gave_away(fleet: Fleet, trained: TrainingResult) -> None:
    fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
    topic = fleet.topics["input"]
    _, first = fleet.start_worker(**QUICK_FAILOVER)
    payloads, keys = labelled_stream(300, seed=48)
    fleet.produce(payloads, keys)
    fleet.wait_for_outputs(len(payloads))
    assert wait_until(lambda: lag_partitions(first, topic) == {"0", "1", "2"}, 30)
    _, second = fleet.start_worker(**QUICK_FAILOVER)  # the group rebalances: the first gives partitions away
    assert wait_until(lambda: 0 < len(lag_partitions(first, topic)) < 3, 60), lag_partitions(first, topic)
    more, more_keys = labelled_stream(300, seed=49)
    fleet.produce(more, more_keys)  # the second reports the lag of what it has consumed from

    def split() -> bool:
        kept, taken = lag_partitions(first, topic), lag_partitions(second, topic)
        return bool(kept) and bool(taken) and not kept & taken and kept | taken == {"0", "1", "2"}

    assert wait_until(split, 60), (lag_partitions(first, topic), lag_partitions(second, topic))
