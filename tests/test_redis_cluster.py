"""Entity state and the registry on a real local Redis Cluster (three masters), and a worker served by it.

A cluster refuses a multi-key command across hash slots; these tests prove that every operation
fleetwatch sends stays inside one slot, that a batch's state spreads over the nodes, and that a real
`fleetwatch worker` given a `redis+cluster://` URL scores a stream end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.cluster import RedisCluster as ClusterClient

from shared.artifact_store import RedisArtifactStore
from shared.kafka_client import KafkaConnection
from shared.local_infra.redis_server import RedisCluster
from shared.redis_connection import connect_redis
from shared.registry import ModelRegistry
from shared.state_store import EntityStateStore
from shared.streams.transactions.stream import TRANSACTIONS
from tests.fleet import event_ids, labelled_stream, open_fleet
from tests.small_models import train_small

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    nodes = RedisCluster.on_free_ports(tmp_path_factory.mktemp("redis-cluster"), nodes=3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def client(cluster: RedisCluster) -> ClusterClient:
    connected = connect_redis(cluster.url)
    assert isinstance(connected, ClusterClient)
    return connected


def test_a_batch_of_state_spreads_over_the_nodes_and_replays_count_once(
    client: ClusterClient, unique_name: str
) -> None:
    offline = TRANSACTIONS.offline(
        TRANSACTIONS.synthetic(events=3_000, entities=400, anomaly_rate=0.01, seed=2).payloads
    )
    store = EntityStateStore(client, f"{unique_name}:", TRANSACTIONS)
    rows = [np.arange(0, 1_500), np.arange(1_500, 3_000)]
    zeros = np.zeros(3_000, dtype=np.int64)
    got = [store.features(offline.columns.take(r), zeros[r], r) for r in rows]
    np.testing.assert_allclose(np.vstack(got), offline.raw_features, rtol=1e-9, atol=1e-9)
    replayed = store.features(offline.columns.take(rows[1]), zeros[rows[1]], rows[1])
    np.testing.assert_allclose(replayed, offline.raw_features[rows[1]], rtol=1e-9, atol=1e-9)
    per_node = [node.redis_connection.dbsize() for node in client.get_primaries()]
    assert len(per_node) == 3 and all(count > 0 for count in per_node), per_node


def test_the_registry_publishes_promotes_and_rolls_back_on_a_cluster(client: ClusterClient, unique_name: str) -> None:
    trained = train_small(events=3_000, seed=4)
    registry = ModelRegistry(client, RedisArtifactStore(client, f"{unique_name}:"), b"k" * 32, f"{unique_name}:")
    first = registry.publish(trained.bundle, trained.draft, deploy=True)
    second = registry.publish(trained.bundle, trained.draft, deploy=False)
    assert registry.promote("transactions", second.version).version == second.version
    assert registry.rollback("transactions").version == first.version
    assert registry.version_numbers("transactions") == [first.version, second.version]
    loaded = registry.load_deployed("transactions")
    assert loaded is not None and loaded.version == first.version


def test_a_worker_scores_with_its_state_on_a_cluster(
    kafka: KafkaConnection, cluster: RedisCluster, unique_name: str, tmp_path: Path
) -> None:
    payloads, keys = labelled_stream(events=3_000, seed=12)
    with open_fleet(kafka, cluster.url, unique_name, tmp_path) as fleet:
        trained = train_small(events=4_000, seed=8)
        fleet.registry.publish(trained.bundle, trained.draft, deploy=True)
        fleet.start_worker()
        fleet.produce(payloads, keys)
        outputs = fleet.wait_for_outputs(len(payloads))
        states = len(list(fleet.client.scan_iter(match=f"{unique_name}:state:*", count=1_000)))  # every node
    ids = event_ids(outputs["alerts"]) + event_ids(outputs["summary"])
    assert len(ids) == len(payloads) == len(set(ids)), "every event scored once"
    assert states == len(set(keys)), "one stored state per user, across the cluster's nodes"
