"""Users' histories as one structured numpy array, so that a batch's profiles are read, advanced and
written as columns instead of one Python object per user.

A profile is a fixed-size record (`PROFILE_DTYPE`, 160 bytes): counts and running sums, the last few
timestamps (NaN where there are fewer) and hashes of the most recent distinct IPs (0 where there are
fewer). Fixed size is what makes the store fast: a batch's records come back from Redis as one byte
string per user and become one array with a single `np.frombuffer`.

>>> profiles = Profiles.from_blobs(["b", "a"], [None, Profiles.empty_records(1).tobytes()])
>>> profiles.users.tolist(), profiles.aligned(np.array(["a", "c"], dtype=object))["count"].tolist()
(['a'], [0.0, 0.0])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RECENT_TIMESTAMPS = 5
"""How many of a user's latest timestamps a profile keeps (velocity: transactions in the last hour)."""

KNOWN_IPS = 8
"""How many of a user's most recent distinct IPs a profile keeps."""

MOMENTS = ("hour_cos_sum", "hour_sin_sum", "log_amount_sum", "log_amount_sq_sum")
"""Running sums of the hour-of-day vector and of log-amount and its square."""

PROFILE_DTYPE = np.dtype(
    [
        ("count", "<f8"),
        ("amount_sum", "<f8"),
        ("amount_max", "<f8"),
        *((name, "<f8") for name in MOMENTS),
        ("recent_ts", "<f8", (RECENT_TIMESTAMPS,)),  # newest first, NaN-padded
        ("ips", "<u8", (KNOWN_IPS,)),  # hashes, most recent first, 0-padded
    ]
)


def ip_hashes(ips: np.ndarray) -> np.ndarray:
    """A stable, non-zero 64-bit hash per IP string (0 marks an empty slot); each distinct IP hashed once."""
    distinct, inverse = np.unique(ips.astype(str), return_inverse=True)
    hashed = np.fromiter(
        (int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "little") for ip in distinct.tolist()),
        dtype=np.uint64,
        count=len(distinct),
    )
    hashed[hashed == 0] = 1
    return hashed[inverse.reshape(-1)]


@dataclass(frozen=True)
class Profiles:
    """Profiles of a set of users: `users` sorted (the order `np.unique` gives), `records` aligned with them."""

    users: np.ndarray
    records: np.ndarray

    @staticmethod
    def empty_records(n: int) -> np.ndarray:
        records = np.zeros(n, dtype=PROFILE_DTYPE)
        records["recent_ts"] = np.nan
        return records

    @classmethod
    def empty(cls) -> Profiles:
        return cls(np.array([], dtype=object), cls.empty_records(0))

    @classmethod
    def from_blobs(cls, users: Sequence[str], blobs: Sequence[bytes | None]) -> Profiles:
        """Profiles from one stored record per user; users without one (None) are left out."""
        present = [index for index, blob in enumerate(blobs) if blob is not None]
        records = np.frombuffer(b"".join(blobs[index] or b"" for index in present), dtype=PROFILE_DTYPE)
        return cls.of(np.array([users[index] for index in present], dtype=object), records)

    @classmethod
    def of(cls, users: np.ndarray, records: np.ndarray) -> Profiles:
        """Sorts the users (and their records) into the order lookups expect."""
        order = np.argsort(users, kind="stable")
        return cls(users[order], records[order])

    def aligned(self, users: np.ndarray) -> np.ndarray:
        """Records for `users` (sorted, distinct), an empty profile for each user not held here."""
        records = self.empty_records(len(users))
        if len(self.users) == 0 or len(users) == 0:
            return records
        at = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        held = self.users[at] == users
        records[held] = self.records[at[held]]
        return records

    def blobs(self) -> list[bytes]:
        """One byte string per user, in `users` order: what a key-value store keeps."""
        whole, size = self.records.tobytes(), PROFILE_DTYPE.itemsize
        return [whole[start : start + size] for start in range(0, len(whole), size)]

    def __len__(self) -> int:
        return len(self.users)
