"""Connecting to Redis from one URL: a single server (`redis://`, `rediss://`) or a Redis Cluster
(`redis+cluster://host:port`, `rediss+cluster://...`: any node is a start-up node).

Keys that one operation touches together share a hash tag, so each such operation stays in one slot
on a cluster: a stream's registry keys (one transaction per publish or pointer move), and the entity
states of a bucket (one read and one compare-and-set script per bucket and node, `shared.state_store`).

>>> cluster_start_url("redis+cluster://127.0.0.1:7000/0"), cluster_start_url("redis://127.0.0.1:6379/0")
('redis://127.0.0.1:7000/0', None)
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster

RedisClient: TypeAlias = redis.Redis | RedisCluster

CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}


def cluster_start_url(url: str) -> str | None:
    """The plain URL of the start-up node when `url` names a cluster; None for a single server."""
    for scheme, plain in CLUSTER_SCHEMES.items():
        if url.startswith(scheme):
            return plain + url.removeprefix(scheme)
    return None


def connect_redis(url: str, **options: Any) -> RedisClient:
    """A client for `url`. A cluster client reads the cluster's slot map at once (the node must answer);
    a single-server client connects on first use."""
    start = cluster_start_url(url)
    return RedisCluster.from_url(start, **options) if start else redis.Redis.from_url(url, **options)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)
