"""Session fixtures: the tests' own Kafka broker and Redis server on free loopback ports.

Never the `dev up` ports, so a developer's running stack is untouched. Both stop at the end of the
session, also when tests fail. A fixture that cannot start its server fails the tests that need it;
nothing is skipped. Tests that use them are marked `integration` automatically, and with
FLEETWATCH_REQUIRE_INTEGRATION=1 (set by .ci/run) a session in which no integration test passed fails.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from shared.kafka_client import KafkaConnection, ensure_topics
from shared.local_infra.kafka_broker import KafkaBroker
from shared.local_infra.processes import interrupt_on_sigterm
from shared.local_infra.redis_server import RedisServer
from tests.servers import running_broker, running_redis

INTEGRATION_FIXTURES = {"kafka_broker", "redis_server"}

# Two cores shared with a JVM broker: wall-clock health checks would flake; correctness checks stay.
settings.register_profile("fleetwatch", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fleetwatch")


# A terminated test run (CI timeout, kill) still tears its fixtures down: no broker or Redis is orphaned.
interrupt_on_sigterm()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with running_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def kafka(kafka_broker: KafkaBroker) -> KafkaConnection:
    return KafkaConnection(kafka_broker.bootstrap)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses: for topics, consumer groups and Redis key prefixes."""
    test_name = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:60].strip("-")
    return f"{test_name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_topic(kafka: KafkaConnection, unique_name: str) -> Callable[..., str]:
    """Create a topic unique to this test: make_topic("alerts", partitions=3) -> its name."""

    def create(role: str, partitions: int = 3) -> str:
        name = f"{role}.{unique_name}"
        ensure_topics(kafka, [name], partitions=partitions)
        return name

    return create


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


_integration_outcomes: dict[str, int] = {"passed": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "integration" in report.keywords and report.when == "call":
        if report.passed:
            _integration_outcomes["passed"] += 1
        elif report.skipped:
            _integration_outcomes["skipped"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("FLEETWATCH_REQUIRE_INTEGRATION") != "1" or exitstatus != 0:
        return
    if _integration_outcomes["passed"] == 0 or _integration_outcomes["skipped"]:
        print(f"\nFLEETWATCH_REQUIRE_INTEGRATION: integration outcomes {_integration_outcomes}; failing the session")
        session.exitstatus = 1
