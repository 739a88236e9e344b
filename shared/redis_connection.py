"""Connecting to Redis from one URL: a single server (`redis://`, `rediss://`) or a Redis Cluster
(`redis+cluster://host:port`, `rediss+cluster://...`: any node is a start-up node).

Keys that one operation touches together share a hash tag, so each such operation stays in one slot
on a cluster: a stream's registry keys (one transaction per publish or pointer move), and the entity
states of a bucket (one read and one compare-and-set script per bucket and node, `shared.state_store`).

>>> cluster_start_url("redis+cluster://127.0.0.1:7000/0"), cluster_start_url("redis://127.0.0.1:6379/0")
('redis://127.0.0.1:7000/0', None)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
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


def bucket_groups(buckets: np.ndarray) -> list[np.ndarray]:
    """The rows of each bucket (ascending buckets, rows in their order): one script call or command per slot."""
    order = np.argsort(buckets, kind="stable")
    starts = np.flatnonzero(np.r_[True, buckets[order][1:] != buckets[order][:-1]])
    return np.split(order, starts[1:]) if len(order) else []


def run_script_pipelined(
    client: RedisClient, script: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    """Run a registered script once per (keys, args), pipelined: one round trip (per node on a cluster, each
    call inside one slot); a server that forgot the script (restarted) gets it loaded and the calls again."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return list(pipe.execute())
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            client.script_load(script.script)  # loads on every primary of a cluster
    raise AssertionError("unreachable")
