"""Per-user profiles in Redis, so that scoring workers stay stateless and any of them can take over a partition.

Each batch reads its users' profiles in one pipelined round trip and writes them back in one script
call. Replays are idempotent per (partition, offset): a stored profile remembers the state it had
before the batch that last wrote it (`snapshot`) and the offsets that batch covered. When a batch is
replayed (its Kafka transaction aborted, or its worker died before committing), the worker starts
again from that snapshot, so no event counts twice. The write is refused for a user whose stored
profile comes from a later batch, so a fenced zombie worker cannot overwrite newer state.
"""

from __future__ import annotations

import msgspec
import numpy as np
import redis

from shared.features import UserProfile

WRITE_SCRIPT = """
-- KEYS: profile keys; ARGV: ttl_seconds, then per key: partition, snap_offset, envelope
local ttl = tonumber(ARGV[1])
local refused = 0
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 3
  local partition, snap = ARGV[base + 1], tonumber(ARGV[base + 2])
  local stored = redis.call('HMGET', key, 'partition', 'snap')
  if stored[1] == partition and stored[2] and tonumber(stored[2]) > snap then
    refused = refused + 1
  else
    redis.call('HSET', key, 'partition', partition, 'snap', snap, 'env', ARGV[base + 3])
    redis.call('EXPIRE', key, ttl)
  end
end
return refused
"""


class ProfileEnvelope(msgspec.Struct, array_like=True):
    state: UserProfile
    snapshot: UserProfile
    snap_offset: int
    applied_offset: int


_ENVELOPE_DECODER = msgspec.msgpack.Decoder(ProfileEnvelope)
_ENCODER = msgspec.msgpack.Encoder()


class ProfileStore:
    def __init__(self, client: redis.Redis, prefix: str, stream: str, ttl_s: int = 90 * 86400) -> None:
        self._redis = client
        self._prefix = f"{prefix}profile:{stream}:"
        self._ttl_s = ttl_s
        self._write = client.register_script(WRITE_SCRIPT)

    def _key(self, user: str) -> str:
        return self._prefix + user

    def read(self, users: list[str], partitions: np.ndarray, first_offsets: np.ndarray) -> dict[str, UserProfile]:
        """Profiles to start each user from: the stored state, or its snapshot when this is a replay."""
        pipe = self._redis.pipeline(transaction=False)
        for user in users:
            pipe.hmget(self._key(user), "partition", "env")
        stored = pipe.execute()
        start: dict[str, UserProfile] = {}
        # Per user, not per event: each profile is its own small msgpack record.
        for user, (partition, envelope_bytes), batch_partition, first in zip(
            users, stored, partitions.tolist(), first_offsets.tolist(), strict=True
        ):
            if envelope_bytes is None:
                continue
            envelope = _ENVELOPE_DECODER.decode(envelope_bytes)
            if int(partition) == batch_partition and first <= envelope.applied_offset:
                start[user] = envelope.snapshot
            else:
                start[user] = envelope.state
        return start

    def write(
        self,
        after: dict[str, UserProfile],
        start: dict[str, UserProfile],
        partitions: dict[str, int],
        first_offsets: dict[str, int],
        last_offsets: dict[str, int],
    ) -> int:
        """Store every user's new state with the snapshot it started from; return how many were refused."""
        if not after:
            return 0
        keys: list[str] = []
        args: list[int | bytes] = [self._ttl_s]
        empty = UserProfile()
        for user, state in after.items():
            envelope = ProfileEnvelope(state, start.get(user, empty), first_offsets[user], last_offsets[user])
            keys.append(self._key(user))
            args += [partitions[user], first_offsets[user], _ENCODER.encode(envelope)]
        return int(self._write(keys=keys, args=args))
