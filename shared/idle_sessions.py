"""Ending sessions that went idle: a session whose lines simply stop has no next line to notice it, so the
workers do.

A stream with sessions says, per entity whose stored state holds an open session, the event time after
which that session is idle (`Stream.idle_deadlines`). Every state write records those deadlines in a sorted
set per bucket of entities, under the same hash tag as the bucket's states (one slot on a Redis Cluster).
Every `idle_sweep_interval_s` a worker claims the sessions whose deadline is at or before the newest event
time it has scored: fetch and remove in one script, so two workers never claim the same session. It checks
each against its stored state (a newer line may have moved the deadline: that one is put back) and
produces the session's end record (`Stream.end_records`) to the input partition its state was last written
from, behind the session's lines, in the batch's own commit. The end record is then an input like any
other: one output, the complete session scored.

When that commit fails the claims are put back and the next sweep ends the sessions again; a worker killed
between claim and commit loses those end records (the sessions then close at their next line, unjudged):
at most one end record per idle session, never two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.redis_connection import RedisClient, bucket_groups, run_script_pipelined

CLAIM_SCRIPT = """
-- KEYS[1]: one bucket's idle deadlines; ARGV: the event time sessions must be idle by, the most to claim
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

CLAIM_LIMIT = 1000
"""Most sessions one bucket gives up per sweep (the rest wait for the next sweep)."""


@dataclass(frozen=True)
class IdleDeadlines:
    """Entities, the bucket each key's hash tag names, and each one's idle deadline (NaN: no open session)."""

    entities: np.ndarray
    buckets: np.ndarray
    deadlines: np.ndarray


class IdleSessionIndex:
    """One stream's idle deadlines in Redis, under `{prefix}idle:{key_version}:{stream}:{{b<bucket>}}`."""

    def __init__(self, client: RedisClient, prefix: str, buckets: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._buckets = buckets
        self._claim = client.register_script(CLAIM_SCRIPT)

    def _key(self, bucket: int) -> str:
        return f"{self._prefix}{{b{bucket}}}"

    def record(self, index: IdleDeadlines) -> None:
        """Add or move the open sessions' deadlines, drop the closed ones: one pipelined round trip."""
        if not len(index.entities):
            return
        pipe = self._redis.pipeline(transaction=False)
        for rows in bucket_groups(index.buckets):
            key = self._key(int(index.buckets[rows[0]]))
            deadlines = index.deadlines[rows]
            is_open = np.isfinite(deadlines)
            if is_open.any():
                entities = index.entities[rows][is_open].tolist()
                pipe.zadd(key, dict(zip(entities, deadlines[is_open].tolist(), strict=True)))
            if not is_open.all():
                pipe.zrem(key, *index.entities[rows][~is_open].tolist())
        pipe.execute()

    def claim(self, idle_by: float) -> list[str]:
        """Remove and return the entities whose deadline is at or before `idle_by` (event time, seconds)."""
        calls = [([self._key(bucket)], [repr(idle_by), CLAIM_LIMIT]) for bucket in range(self._buckets)]
        claimed = run_script_pipelined(self._redis, self._claim, calls)
        return [entity.decode() if isinstance(entity, bytes) else entity for due in claimed for entity in due]
