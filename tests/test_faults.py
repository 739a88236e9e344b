"""Faults on the real broker and Redis, with workers as real processes: what each delivery mode promises.

Every input is identified by its source partition and offset, which every output record carries, so
"none lost" and "none duplicated" are counted, not sampled. The broker and Redis restart tests use
this module's own broker and Redis (stopped and started again on the same ports and data); the
session's shared ones are never stopped.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
import redis
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from shared.kafka_client import KafkaConnection, admin_client, read_all
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.redis_server import RedisServer
from shared.output_records import decode_output
from shared.training import TrainingResult
from tests.fleet import QUICK_FAILOVER, Fleet, labelled_stream, metric_total, open_fleet, produce_paced, wait_until
from tests.servers import running_broker, running_redis
from tests.small_models import train_small

AT_LEAST_ONCE = {"FLEETWATCH_WORKER__DELIVERY": "at_least_once"}
BROKER_DOWN_S = 10.0
REFUSING_S = 25.0
NOT_ACKNOWLEDGED = "outputs not acknowledged; offsets not committed, batch read again"


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    return train_small()


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with running_broker(tmp_path_factory.mktemp("fault-kafka"), heap_mb=384) as broker:
        yield broker


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("fault-redis"), persistent=True) as server:
        yield server


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


# --- what the tests count ------------------------------------------------------------------------
def input_positions(fleet: Fleet) -> set[tuple[int, int]]:
    """(partition, offset) of every record on the input topic."""
    return {(int(m.partition()), int(m.offset())) for m in read_all(fleet.kafka, fleet.topics["input"])}


def output_sources(fleet: Fleet) -> Counter[tuple[int, int]]:
    """How many scored outputs each input (partition, offset) has so far."""
    outputs = fleet.outputs()
    return Counter(
        (decoded.source.partition, decoded.source.offset)
        for decoded in (decode_output(r.value()) for r in outputs["alerts"] + outputs["summary"])
    )


def wait_until_covered(fleet: Fleet, inputs: set[tuple[int, int]], timeout_s: float) -> Counter[tuple[int, int]]:
    """The outputs once every input has one (or at the timeout); a moment longer, so late duplicates show."""
    wait_until(lambda: inputs <= set(output_sources(fleet)), timeout_s)
    time.sleep(2.0)
    return output_sources(fleet)


def worker_events(log: str, event: str) -> list[dict]:
    """The worker's own JSON log lines of one event (librdkafka writes plain lines to the same stderr)."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


# --- the broker ----------------------------------------------------------------------------------
def restart_mid_stream(fleet: Fleet, broker: KafkaBroker, events: int, seed: int) -> set[tuple[int, int]]:
    """Stop the broker for BROKER_DOWN_S while inputs flow and outputs come; return the inputs' positions."""
    payloads, keys = labelled_stream(events, seed=seed)
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(produce_paced, fleet, payloads, keys, 1_000)
        assert wait_until(lambda: fleet.scored_count() > 1_000, 60)
        assert fleet.scored_count() < events - 5_000, "the restart would come too late to test anything"
        broker.stop()
        time.sleep(BROKER_DOWN_S)
        broker.start()
        assert sending.result() == 0, "the input producer did not ride through the restart"
    inputs = input_positions(fleet)
    assert len(inputs) == events
    return inputs


@pytest.mark.parametrize("overlap_commit", ["false", "true"])
def test_exactly_once_rides_through_a_broker_restart_with_one_output_per_input(
    own_broker: KafkaBroker,
    redis_server: RedisServer,
    trained: TrainingResult,
    unique_name: str,
    logs: Path,
    overlap_commit: str,
) -> None:
    kafka = KafkaConnection(own_broker.bootstrap)
    with open_fleet(kafka, redis_server.url, unique_name, logs) as fleet:
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        worker, _ = fleet.start_worker(FLEETWATCH_WORKER__OVERLAP_COMMIT=overlap_commit)
        inputs = restart_mid_stream(fleet, own_broker, events=20_000, seed=51)
        sources = wait_until_covered(fleet, inputs, timeout_s=360)  # see the at-least-once test below

        assert worker.poll() is None, f"the worker died:\n{fleet.log_of(worker)[-3000:]}"
        assert inputs - set(sources) == set(), "inputs without an output"
        assert {position: n for position, n in sources.items() if n > 1} == {}, "inputs with two outputs"
        assert set(sources) == inputs


def test_at_least_once_rides_through_a_broker_restart_and_loses_nothing(
    own_broker: KafkaBroker, redis_server: RedisServer, trained: TrainingResult, unique_name: str, logs: Path
) -> None:
    kafka = KafkaConnection(own_broker.bootstrap)
    with open_fleet(kafka, redis_server.url, unique_name, logs) as fleet:
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        worker, _ = fleet.start_worker(**AT_LEAST_ONCE)
        inputs = restart_mid_stream(fleet, own_broker, events=20_000, seed=52)
        # After the restart the group coordinator can take minutes to let the worker back in (seen once: its
        # session timed out at 45 s and it was not reassigned 100 s later); nothing is lost meanwhile, only late.
        sources = wait_until_covered(fleet, inputs, timeout_s=360)

        assert worker.poll() is None, f"the worker died:\n{fleet.log_of(worker)[-3000:]}"
        assert inputs - set(sources) == set(), "inputs without an output"
        assert set(sources) == inputs


def set_max_message_bytes(kafka: KafkaConnection, topic: str, value: str | None) -> None:
    """Lower the topic's record-batch limit (`value`), or restore the broker default (None)."""
    operation = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", value, incremental_operation=operation)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = admin_client(kafka)  # held until the futures resolve: destroying it fails them
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_at_least_once_reads_a_batch_again_until_the_refusing_topic_takes_it(
    kafka: KafkaConnection, redis_server: RedisServer, trained: TrainingResult, unique_name: str, logs: Path
) -> None:
    with open_fleet(kafka, redis_server.url, unique_name, logs) as fleet:
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        worker, port = fleet.start_worker(**AT_LEAST_ONCE)
        payloads, keys = labelled_stream(3_000, seed=53)
        fleet.produce(payloads[:500], keys[:500])
        assert wait_until(lambda: fleet.scored_count() >= 500, 60)

        set_max_message_bytes(kafka, fleet.topics["summary"], "100")
        refusing_since = time.monotonic()
        fleet.produce(payloads[500:], keys[500:])
        refused = lambda: metric_total(port, "fleetwatch_outputs_not_acknowledged", error="MSG_SIZE_TOO_LARGE")  # noqa: E731
        assert wait_until(lambda: refused() > 0, 20), "the summary topic never refused a record"
        time.sleep(max(0.0, REFUSING_S - (time.monotonic() - refusing_since)))
        assert fleet.scored_count() < len(payloads)
        set_max_message_bytes(kafka, fleet.topics["summary"], None)

        inputs = input_positions(fleet)
        sources = wait_until_covered(fleet, inputs, timeout_s=60)
        assert worker.poll() is None, f"the worker died:\n{fleet.log_of(worker)[-3000:]}"
        assert inputs - set(sources) == set(), "inputs without an output"
        assert metric_total(port, "fleetwatch_batches_reread", reason="delivery_failed") > 0
        # Counted when a batch commits: the batches read again are counted once, not at every attempt.
        events = lambda: metric_total(port, "fleetwatch_events")  # noqa: E731
        assert wait_until(lambda: events() >= len(payloads), 10), f"{events()} events counted"
        assert events() == len(payloads)
        reread = worker_events(fleet.log_of(worker), NOT_ACKNOWLEDGED)
        assert reread and reread[0]["failed"] > 0
        assert reread[0]["errors"][fleet.topics["summary"]]["MSG_SIZE_TOO_LARGE"] > 0
        assert all(batch.startswith(fleet.topics["input"]) for batch in reread[0]["batch"])


# --- Redis ---------------------------------------------------------------------------------------
def newcomers(events: int, seed: int) -> tuple[list[bytes], list[str], set[str]]:
    """Events of users no profile exists for yet."""
    payloads, keys = labelled_stream(events, seed=seed)
    renamed = []
    for payload in payloads:
        event = msgspec.json.decode(payload)
        event["user_id"] = f"newcomer-{event['user_id']}"
        renamed.append(msgspec.json.encode(event))
    users = [f"newcomer-{key}" for key in keys]
    return renamed, users, set(users)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def first_version_seen(fleet: Fleet, version: int) -> bool:
    outputs = fleet.outputs()
    return any(decode_output(r.value()).model_version == version for r in outputs["alerts"] + outputs["summary"])


def test_scoring_goes_on_while_redis_restarts_and_profiles_and_reloads_converge_after(
    kafka: KafkaConnection, own_redis: RedisServer, trained: TrainingResult, unique_name: str, logs: Path
) -> None:
    with open_fleet(kafka, own_redis.url, unique_name, logs) as fleet:
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        worker, port = fleet.start_worker()
        payloads, keys = labelled_stream(8_000, seed=54)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(produce_paced, fleet, payloads, keys, 500)
            assert wait_until(lambda: fleet.scored_count() > 500, 60)

            own_redis.stop()
            scored_when_stopped = fleet.scored_count()
            assert wait_until(lambda: fleet.scored_count() > scored_when_stopped + 1_000, 20), "scoring stopped"
            assert metric_total(port, "fleetwatch_profile_store_errors") > 0

            own_redis.start()
            assert wait_until(lambda: answers(fleet.client), 10)
            fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
            assert wait_until(lambda: first_version_seen(fleet, 2), 30), "the new version was not picked up"

            errors_after_restart = metric_total(port, "fleetwatch_profile_store_errors")
            fresh, fresh_keys, fresh_users = newcomers(300, seed=55)
            fleet.produce(fresh, fresh_keys)
            prefix = fleet.registry.keys.prefix
            stored = lambda: {user for user in fresh_users if fleet.client.keys(f"{prefix}*{user}")}  # noqa: E731
            assert wait_until(lambda: stored() == fresh_users, 30), "profiles were not written after the restart"
            assert sending.result() == 0
        assert metric_total(port, "fleetwatch_profile_store_errors") == errors_after_restart

        inputs = input_positions(fleet)
        sources = wait_until_covered(fleet, inputs, timeout_s=60)
        assert worker.poll() is None
        assert set(sources) == inputs and max(sources.values()) == 1


# --- a worker ------------------------------------------------------------------------------------
def assigned_partitions(log: str) -> set[str]:
    return {p for line in worker_events(log, "partitions assigned") for p in line["partitions"]}


def test_when_one_of_two_workers_is_killed_the_other_takes_over_and_nothing_is_lost(
    kafka: KafkaConnection, redis_server: RedisServer, trained: TrainingResult, unique_name: str, logs: Path
) -> None:
    with open_fleet(kafka, redis_server.url, unique_name, logs) as fleet:
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        victim, _ = fleet.start_worker(**QUICK_FAILOVER)
        survivor, _ = fleet.start_worker(**QUICK_FAILOVER)
        payloads, keys = labelled_stream(12_000, seed=56)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(produce_paced, fleet, payloads, keys, 1_500)
            assert wait_until(lambda: fleet.scored_count() > 2_000, 60)
            assert assigned_partitions(fleet.log_of(victim)), "the victim owned no partition"
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert fleet.scored_count() < len(payloads), "the kill came too late to test anything"
            assert sending.result() == 0

        inputs = input_positions(fleet)
        sources = wait_until_covered(fleet, inputs, timeout_s=120)
        assert survivor.poll() is None
        assert inputs - set(sources) == set(), "inputs without an output"
        assert {position: n for position, n in sources.items() if n > 1} == {}, "inputs with two outputs"
        every_input_partition = {f"{fleet.topics['input']}[{p}]" for p in range(3)}
        assert assigned_partitions(fleet.log_of(survivor)) == every_input_partition
