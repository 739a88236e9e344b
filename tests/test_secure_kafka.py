"""Every role against a broker that takes clients only over SASL/SCRAM-SHA-512 and TLS.

The module starts its own broker with a SASL_SSL listener (a throw-away CA and broker certificate, one
SCRAM user created when the storage is formatted). The generator, the trainer, a worker and the
summarizer get the README's documented settings and nothing else: the SASL_SSL bootstrap address and
FLEETWATCH_KAFKA_PROPERTIES with security.protocol, sasl.mechanism, sasl.username, sasl.password and
ssl.ca.location.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from shared.config import topic_environment
from shared.kafka_client import KafkaConnection, ensure_topics, producer, read_all
from shared.local_infra.kafka_broker import SaslSslListener
from shared.local_infra.processes import free_port
from shared.local_infra.readiness import prove_kafka_round_trip
from shared.local_infra.redis_server import RedisServer
from tests.fleet import FLEETWATCH, open_fleet
from tests.servers import running_broker
from tests.small_models import SMALL_DETECTORS
from tests.summarizer_processes import Summarizers
from tests.throwaway_ca import issue_certificates

USER, PASSWORD = "fleetwatch", "scram-secret-0123"
EVENTS = 3_000


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaConnection]:
    """The SASL_SSL bootstrap address with the documented properties, proven by a round trip."""
    folder = tmp_path_factory.mktemp("secured-kafka")
    certificates = issue_certificates(folder / "tls")
    listener = SaslSslListener(free_port(), {USER: PASSWORD}, certificates.broker_chain, certificates.broker_key)
    properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(certificates.ca),
    }
    connection = KafkaConnection(listener.bootstrap, properties)
    with running_broker(folder / "broker", heap_mb=384, sasl_ssl=listener):
        prove_kafka_round_trip(connection)
        yield connection


def test_a_wrong_password_is_refused(secured_kafka: KafkaConnection) -> None:
    wrong = KafkaConnection(secured_kafka.bootstrap, {**secured_kafka.properties, "sasl.password": "not-it"})
    errors: list[KafkaError] = []
    client = producer(wrong, error_cb=errors.append)
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        client.poll(0.5)
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors


def test_generator_trainer_worker_and_summarizer_work_with_the_documented_properties(
    secured_kafka: KafkaConnection, redis_server: RedisServer, unique_name: str, tmp_path: Path
) -> None:
    kafka = secured_kafka
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        topics = {**fleet.topics, "reports": f"reports.{unique_name}"}
        ensure_topics(kafka, [topics["reports"]], partitions=1)
        # open_fleet names the bootstrap address; the properties are the documented rest.
        fleet.env.update(
            {
                "FLEETWATCH_CONFIG": str(tmp_path / "absent.toml"),
                "FLEETWATCH_KAFKA_PROPERTIES": json.dumps(dict(kafka.properties)),
                "FLEETWATCH_STREAMS__TRANSACTIONS__DETECTORS": json.dumps([d.model_dump() for d in SMALL_DETECTORS]),
                "FLEETWATCH_SUMMARIZER__APP_ID": f"summarizer-{unique_name}",
                "FLEETWATCH_SUMMARIZER__WINDOW_SIZES_S": "[60]",
                "FLEETWATCH_SUMMARIZER__PARTITIONS": "2",
                "FLEETWATCH_SUMMARIZER__BATCH_TIMEOUT_S": "0.2",
                **topic_environment(topics),
            }
        )

        def run(*args: str) -> None:
            result = subprocess.run(
                [FLEETWATCH, *args], env=fleet.env, cwd=tmp_path, capture_output=True, text=True, timeout=180
            )
            assert result.returncode == 0, result.stderr[-3000:]

        labels = tmp_path / "labels.jsonl"
        # The generator's events arrive, and the trainer reads them back through the same listener.
        run("generate", "--topic", topics["input"], "--labels", str(labels), "--users", "300",
            "--events", str(EVENTS), "--days", "0.02")  # fmt: skip
        assert len(read_all(kafka, topics["input"])) == EVENTS
        run("train", "--topic", topics["input"], "--labels", str(labels))
        assert fleet.registry.deployed_version("transactions") == 1

        summarizers = Summarizers(kafka, fleet.env, topics, tmp_path)
        try:
            summarizers.start()
            fleet.start_worker()
            fleet.wait_for_outputs(EVENTS)
            assert fleet.scored_count() == EVENTS
            assert summarizers.wait_for_reports(windows=1), "the summarizer closed no window"
        finally:
            for process in summarizers.processes:
                process.kill()
                process.wait()
    summarizer_log = (tmp_path / "summarizer-1.log").read_text()
    assert "kafka_properties_not_applied" not in summarizer_log, "every documented property reaches faust"
