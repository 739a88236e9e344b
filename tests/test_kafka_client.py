"""The clients `shared.kafka_client` builds, where no broker is needed to show what they do."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from shared.kafka_client import KafkaConnection, consumer
from shared.local_infra.processes import free_port


def test_a_consumer_whose_brokers_never_answer_says_so_in_the_log_once_per_kind() -> None:
    nowhere = KafkaConnection(f"127.0.0.1:{free_port()}")  # nothing listens there
    with capture_logs() as logs:
        client = consumer(nowhere, "fleetwatch-test")
        client.subscribe(["anything"])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # librdkafka tries again every 0.1-1 s meanwhile
            client.poll(0.2)
        client.close()
    errors = [entry for entry in logs if entry["event"] == "kafka client error"]
    assert {entry["error"] for entry in errors} == {"_TRANSPORT", "_ALL_BROKERS_DOWN"}
    assert len(errors) == 2, "each kind once per interval, not at every attempt"
    refused = next(entry for entry in errors if entry["error"] == "_TRANSPORT")
    assert refused["client"] == "consumer" and refused["retried"] and "Connection refused" in refused["reason"]
