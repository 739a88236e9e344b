"""Entities' state in Redis, so that scoring workers stay stateless and any of them can take over a partition.

Each batch reads its entities' states with one MGET and writes them back with one script call. Replays
are idempotent per (partition, offset): a stored state remembers the state it had before the batch
that last wrote it (`snapshot`) and the offsets that batch covered. When a batch is replayed (its
Kafka transaction aborted, or its worker died before committing), the worker starts again from that
snapshot, so no event counts twice. The write is refused for an entity whose stored state comes from a
later batch, so a fenced zombie worker cannot overwrite newer state.

A stored value is one fixed-size record (`envelope_dtype`): an ASCII header the write script can read
(partition, first and last offset of the batch that wrote it), then the state and the snapshot as
records of the stream's layout. A batch of values therefore decodes with one `np.frombuffer`, no
per-entity parsing.

Keys carry a hash tag naming one of `BUCKETS` buckets of entities (a stable CRC32 of the entity), so on
a Redis Cluster a batch's states are read with one MGET per bucket and written with one script call per
bucket, pipelined: one round trip per node, every script inside one slot. On a single server it is one
MGET and one script call per batch, as before. When Redis is unavailable the batch is still scored, from
empty states, and the failure is logged and counted: a worker keeps serving, and its outputs say nothing
they should not.

A stream with sessions (`Stream.idle_deadlines`) also has each written entity's idle deadline recorded in
the idle-session index (`shared.idle_sessions`), from which the workers end idle sessions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import redis

from shared import metrics
from shared.entity_state import EntityStates, StateLayout
from shared.idle_sessions import IdleDeadlines, IdleSessionIndex
from shared.logs import get_logger
from shared.pipeline import EventColumns, Stream
from shared.redis_connection import RedisClient, bucket_groups, is_cluster, run_script_pipelined

log = get_logger("fleetwatch.state")

PARTITION_DIGITS, OFFSET_DIGITS = 10, 19


def envelope_dtype(layout: StateLayout) -> np.dtype:
    return np.dtype(
        [
            ("partition", f"S{PARTITION_DIGITS}"),
            ("snap_offset", f"S{OFFSET_DIGITS}"),
            ("applied_offset", f"S{OFFSET_DIGITS}"),
            ("state", layout.dtype),
            ("snapshot", layout.dtype),
        ]
    )


KEY_VERSION = "v3"
"""Part of every key: bump when the envelope layout or the key scheme changes, so old values are never misread."""

BUCKETS = 256
"""Hash-tag buckets: enough to spread a cluster's slots over its nodes, few enough to batch per bucket."""

WRITE_SCRIPT = f"""
-- KEYS: state keys; ARGV: ttl_seconds, the keys' envelopes concatenated (header: partition, snap offset),
-- the size of one envelope. One argument for all of them: packing and parsing a thousand is what cost.
local ttl = tonumber(ARGV[1])
local envelopes = ARGV[2]
local size = tonumber(ARGV[3])
local refused = 0
for i, key in ipairs(KEYS) do
  local envelope = string.sub(envelopes, (i - 1) * size + 1, i * size)
  local stored = redis.call('GET', key)
  if stored and string.sub(stored, 1, {PARTITION_DIGITS}) == string.sub(envelope, 1, {PARTITION_DIGITS})
      and tonumber(string.sub(stored, {PARTITION_DIGITS + 1}, {PARTITION_DIGITS + OFFSET_DIGITS}))
        > tonumber(string.sub(envelope, {PARTITION_DIGITS + 1}, {PARTITION_DIGITS + OFFSET_DIGITS})) then
    refused = refused + 1
  else
    redis.call('SET', key, envelope, 'EX', ttl)
  end
end
return refused
"""


def nothing_to_store() -> None:
    """The write of a batch that changes no stored state (scored from empty states, or dead letters only)."""


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as zero-padded ASCII of a fixed width (what Lua's tonumber reads)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    ascii_digits = (values.astype(np.int64)[:, None] // powers[None, :]) % 10 + ord("0")
    return np.ascontiguousarray(ascii_digits.astype(np.uint8)).view(f"S{width}").reshape(-1)


@dataclass(frozen=True)
class EntityKeys:
    """The Redis keys of a batch's entities, and the bucket each key's hash tag names."""

    names: list[str]
    buckets: np.ndarray


@dataclass(frozen=True)
class _Advanced:
    """What storing a batch's advanced states needs: per entity (in `keys`' order) the new and the starting
    state, its partition and the batch's first and last offset of it."""

    keys: EntityKeys
    after: EntityStates
    start: EntityStates
    partitions: np.ndarray
    first_offsets: np.ndarray
    last_offsets: np.ndarray
    stream: Stream[Any, Any]


StateWrite = Callable[[], None]
"""Stores a batch's advanced states when called (logs and counts a failure, never raises it)."""


class EntityStateStore:
    """One stream's entity states in Redis, under `{prefix}state:{KEY_VERSION}:{stream}:{{b<bucket>}}:{entity}`."""

    def __init__(self, client: RedisClient, prefix: str, stream: Stream[Any, Any], ttl_s: int = 90 * 86400) -> None:
        self._redis = client
        self._cluster = is_cluster(client)
        self._stream = stream
        self._prefix = f"{prefix}state:{KEY_VERSION}:{stream.name}:"
        self._ttl_s = ttl_s
        self._write = client.register_script(WRITE_SCRIPT)
        self._idle = IdleSessionIndex(client, f"{prefix}idle:{KEY_VERSION}:{stream.name}:", BUCKETS)

    def _keys(self, entities: np.ndarray) -> EntityKeys:
        """Each entity's key and its bucket (the key's hash tag), in one pass over the entities."""
        names, buckets = [], []
        prefix = self._prefix
        for entity in entities.tolist():
            bucket = zlib.crc32(entity.encode()) % BUCKETS
            buckets.append(bucket)
            names.append(f"{prefix}{{b{bucket}}}:{entity}")
        return EntityKeys(names, np.array(buckets, dtype=np.int64))

    def features(
        self,
        columns: EventColumns,
        partitions: np.ndarray,
        offsets: np.ndarray,
        stream: Stream[Any, Any] | None = None,
    ) -> np.ndarray:
        """Raw features of a consumed batch from its entities' stored states, which are advanced and stored.

        `partitions` and `offsets` say where each event was read; an entity's events of one batch come from
        one partition (events are keyed by entity). `stream` is the version's (with what it learned, and its
        state layout: a sensor stream's depends on the window size it was trained with), by default the store's.
        Without Redis: from empty states, logged and counted."""
        raw, store = self.features_to_store(columns, partitions, offsets, stream)
        store()
        return raw

    def features_to_store(
        self,
        columns: EventColumns,
        partitions: np.ndarray,
        offsets: np.ndarray,
        stream: Stream[Any, Any] | None = None,
    ) -> tuple[np.ndarray, StateWrite]:
        """`features`, with the advanced states not stored yet: the worker stores them once it knows the batch
        before this one committed (a batch read again must not find later batches' states)."""
        stream = stream or self._stream
        entities, inverse = np.unique(columns.entity, return_inverse=True)
        inverse = inverse.reshape(-1)
        first = np.full(len(entities), np.iinfo(np.int64).max)
        last = np.full(len(entities), -1)
        np.minimum.at(first, inverse, offsets)
        np.maximum.at(last, inverse, offsets)
        entity_partition = np.zeros(len(entities), dtype=np.int64)
        entity_partition[inverse] = partitions
        keys = self._keys(entities)
        try:
            start = self._read(keys, entities, entity_partition, first, stream.state_layout)
        except redis.RedisError as exc:
            metrics.PROFILE_STORE_ERRORS.labels(self._stream.name).inc()
            log.warning("state store unavailable; scoring with empty histories", error=str(exc))
            raw, _ = stream.advance(stream.empty_states(), columns)
            return raw, nothing_to_store
        raw, after = stream.advance(start, columns)
        return raw, partial(self._store_advanced, _Advanced(keys, after, start, entity_partition, first, last, stream))

    def _store_advanced(self, advanced: _Advanced) -> None:
        """A batch's states, then their idle deadlines; failures are logged and counted, not raised."""
        try:
            refused = self._store(advanced)
        except redis.RedisError as exc:
            metrics.PROFILE_STORE_ERRORS.labels(self._stream.name).inc()
            log.warning("state store write failed; states of this batch are not kept", error=str(exc))
            return
        if refused:
            log.warning("states newer than this batch were kept (another worker is ahead)", entities=refused)
        deadlines = advanced.stream.idle_deadlines(advanced.after)
        if deadlines is not None:
            try:  # `after` holds the batch's entities in `keys`' order, as the write above relies on
                self._idle.record(IdleDeadlines(advanced.after.keys, advanced.keys.buckets, deadlines))
            except redis.RedisError as exc:
                metrics.PROFILE_STORE_ERRORS.labels(self._stream.name).inc()
                log.warning("idle-session index write failed; these sessions end at their next line", error=str(exc))

    def record_idle(self, entities: np.ndarray, deadlines: np.ndarray) -> None:
        """Record (or put back) these entities' idle deadlines (NaN: no open session) in the idle-session index."""
        self._idle.record(IdleDeadlines(entities, self._keys(entities).buckets, deadlines))

    def claim_idle(
        self, newest_event_s: Mapping[int, float], stream: Stream[Any, Any]
    ) -> tuple[EntityStates, np.ndarray]:
        """Claim the sessions that are idle by the newest event time read from their own partition (`newest_event_s`
        per partition: a session's lines are all in one, so a lagging partition's sessions wait for it): their
        stored states and the partition each was last written from. A claimed session that is not idle by that
        measure, or whose stored state says otherwise (a newer line moved its deadline), is put back; one closed
        meanwhile is dropped."""
        if not newest_event_s:
            return stream.empty_states(), np.zeros(0, dtype=np.int64)
        claimed = np.array(sorted(set(self._idle.claim(max(newest_event_s.values())))), dtype=object)
        if not len(claimed):
            return stream.empty_states(), np.zeros(0, dtype=np.int64)
        states, partitions = self.stored(claimed, stream.state_layout)
        deadlines = stream.idle_deadlines(states)
        assert deadlines is not None, "only a stream with sessions has idle ones"
        idle_by = np.array([newest_event_s.get(p, -np.inf) for p in partitions.tolist()])
        due = deadlines <= idle_by  # NaN (closed meanwhile) is not
        moved = np.isfinite(deadlines) & ~due
        if moved.any():
            self.record_idle(states.keys[moved], deadlines[moved])
        return states.selected(due), partitions[due]

    def stored(self, entities: np.ndarray, layout: StateLayout) -> tuple[EntityStates, np.ndarray]:
        """The stored states of these entities (sorted, distinct; absent ones left out) and the partition each
        was last written from."""
        present, envelopes = self._envelopes(self._keys(entities), layout)
        states = EntityStates.of(layout, entities[present], envelopes["state"].copy())
        return states, envelopes["partition"].astype(np.int64)

    def read(self, entities: np.ndarray, partitions: np.ndarray, first_offsets: np.ndarray) -> EntityStates:
        """States to start each entity (sorted, distinct) from: the stored state, or its snapshot when this
        is a replay."""
        return self._read(self._keys(entities), entities, partitions, first_offsets, self._stream.state_layout)

    def _read(
        self,
        keys: EntityKeys,
        entities: np.ndarray,
        partitions: np.ndarray,
        first_offsets: np.ndarray,
        layout: StateLayout,
    ) -> EntityStates:
        present, envelopes = self._envelopes(keys, layout)
        replay = (envelopes["partition"].astype(np.int64) == partitions[present]) & (
            first_offsets[present] <= envelopes["applied_offset"].astype(np.int64)
        )
        start = envelopes["state"].copy()
        start[replay] = envelopes["snapshot"][replay]
        return EntityStates.of(layout, entities[present], start)

    def _envelopes(self, keys: EntityKeys, layout: StateLayout) -> tuple[np.ndarray, np.ndarray]:
        """Which keys hold a state of this layout, and those envelopes."""
        # A cluster refuses a multi-slot MGET; redis-py's non-atomic MGET sends one per slot, pipelined per node.
        stored = cast(
            list[bytes | None],
            self._redis.mget_nonatomic(keys.names) if self._cluster else self._redis.mget(keys.names),  # type: ignore[union-attr]
        )
        envelope = envelope_dtype(layout)
        size = envelope.itemsize
        readable = [value for value in stored if value is not None and len(value) == size]
        present = np.array([value is not None and len(value) == size for value in stored], dtype=bool)
        if (unreadable := sum(1 for value in stored if value is not None) - len(readable)) > 0:
            # Stored with another state layout (an upgrade, another window size): those entities start afresh.
            metrics.PROFILE_STORE_ERRORS.labels(self._stream.name).inc()
            log.warning("states of another layout were ignored", stream=self._stream.name, entities=unreadable)
        return present, np.frombuffer(b"".join(readable), dtype=envelope)

    def write(
        self,
        after: EntityStates,
        start: EntityStates,
        partitions: np.ndarray,
        first_offsets: np.ndarray,
        last_offsets: np.ndarray,
    ) -> int:
        """Store every entity's new state with the snapshot it started from; return how many were refused.

        `partitions` and the offsets are per entity of `after`, in its order."""
        return self._store(
            _Advanced(self._keys(after.keys), after, start, partitions, first_offsets, last_offsets, self._stream)
        )

    def _store(self, advanced: _Advanced) -> int:
        after = advanced.after
        if not len(after):
            return 0
        envelopes = np.empty(len(after), dtype=envelope_dtype(after.layout))
        envelopes["partition"] = _digits(advanced.partitions, PARTITION_DIGITS)
        envelopes["snap_offset"] = _digits(advanced.first_offsets, OFFSET_DIGITS)
        envelopes["applied_offset"] = _digits(advanced.last_offsets, OFFSET_DIGITS)
        envelopes["state"] = after.records
        envelopes["snapshot"] = advanced.start.aligned(after.keys)
        if not self._cluster:
            return int(
                self._write(keys=advanced.keys.names, args=[self._ttl_s, envelopes.tobytes(), envelopes.itemsize])
            )
        return self._write_by_bucket(advanced.keys, envelopes)

    def _write_by_bucket(self, keys: EntityKeys, envelopes: np.ndarray) -> int:
        """One script call per bucket (one slot each), pipelined: one round trip per cluster node."""
        calls = [
            ([keys.names[i] for i in rows.tolist()], [self._ttl_s, envelopes[rows].tobytes(), envelopes.itemsize])
            for rows in bucket_groups(keys.buckets)
        ]
        return sum(int(refused) for refused in run_script_pipelined(self._redis, self._write, calls))
