"""Per-user profiles in Redis, so that scoring workers stay stateless and any of them can take over a partition.

Each batch reads its users' profiles with one MGET and writes them back with one script call. Replays
are idempotent per (partition, offset): a stored profile remembers the state it had before the batch
that last wrote it (`snapshot`) and the offsets that batch covered. When a batch is replayed (its
Kafka transaction aborted, or its worker died before committing), the worker starts again from that
snapshot, so no event counts twice. The write is refused for a user whose stored profile comes from a
later batch, so a fenced zombie worker cannot overwrite newer state.

A stored value is one fixed-size record (`ENVELOPE_DTYPE`): an ASCII header the write script can read
(partition, first and last offset of the batch that wrote it), then the state and the snapshot as
profile records. A batch of values therefore decodes with one `np.frombuffer`, no per-user parsing.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import redis

from shared.user_profiles import PROFILE_DTYPE, Profiles

PARTITION_DIGITS, OFFSET_DIGITS = 10, 19
ENVELOPE_DTYPE = np.dtype(
    [
        ("partition", f"S{PARTITION_DIGITS}"),
        ("snap_offset", f"S{OFFSET_DIGITS}"),
        ("applied_offset", f"S{OFFSET_DIGITS}"),
        ("state", PROFILE_DTYPE),
        ("snapshot", PROFILE_DTYPE),
    ]
)
KEY_VERSION = "v2"
"""Part of every key: bump when the envelope layout changes, so old values are never misread."""

WRITE_SCRIPT = f"""
-- KEYS: profile keys; ARGV: ttl_seconds, then one envelope per key (header: partition, snap offset)
local ttl = tonumber(ARGV[1])
local refused = 0
for i, key in ipairs(KEYS) do
  local envelope = ARGV[i + 1]
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


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as zero-padded ASCII of a fixed width (what Lua's tonumber reads)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    ascii_digits = (values.astype(np.int64)[:, None] // powers[None, :]) % 10 + ord("0")
    return np.ascontiguousarray(ascii_digits.astype(np.uint8)).view(f"S{width}").reshape(-1)


class ProfileStore:
    def __init__(self, client: redis.Redis, prefix: str, stream: str, ttl_s: int = 90 * 86400) -> None:
        self._redis = client
        self._prefix = f"{prefix}profile:{KEY_VERSION}:{stream}:"
        self._ttl_s = ttl_s
        self._write = client.register_script(WRITE_SCRIPT)

    def _keys(self, users: np.ndarray) -> list[str]:
        return [self._prefix + user for user in users.tolist()]

    def read(self, users: np.ndarray, partitions: np.ndarray, first_offsets: np.ndarray) -> Profiles:
        """Profiles to start each user from: the stored state, or its snapshot when this is a replay."""
        stored = cast(list[bytes | None], self._redis.mget(self._keys(users)))
        present = np.array([value is not None for value in stored], dtype=bool)
        envelopes = np.frombuffer(b"".join(value for value in stored if value is not None), dtype=ENVELOPE_DTYPE)
        replay = (envelopes["partition"].astype(np.int64) == partitions[present]) & (
            first_offsets[present] <= envelopes["applied_offset"].astype(np.int64)
        )
        start = envelopes["state"].copy()
        start[replay] = envelopes["snapshot"][replay]
        return Profiles.of(users[present], start)

    def write(
        self,
        after: Profiles,
        start: Profiles,
        partitions: np.ndarray,
        first_offsets: np.ndarray,
        last_offsets: np.ndarray,
    ) -> int:
        """Store every user's new state with the snapshot it started from; return how many were refused.

        `partitions` and the offsets are per user of `after`, in its order."""
        if not len(after):
            return 0
        envelopes = np.empty(len(after), dtype=ENVELOPE_DTYPE)
        envelopes["partition"] = _digits(partitions, PARTITION_DIGITS)
        envelopes["snap_offset"] = _digits(first_offsets, OFFSET_DIGITS)
        envelopes["applied_offset"] = _digits(last_offsets, OFFSET_DIGITS)
        envelopes["state"] = after.records
        envelopes["snapshot"] = start.aligned(after.users)
        whole, size = envelopes.tobytes(), ENVELOPE_DTYPE.itemsize
        values = [whole[offset : offset + size] for offset in range(0, len(whole), size)]
        return int(self._write(keys=self._keys(after.users), args=[self._ttl_s, *values]))
