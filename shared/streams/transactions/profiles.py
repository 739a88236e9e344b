"""A user's transaction history as one fixed-size state record (`PROFILE_LAYOUT`, 168 bytes).

Counts and running sums, the last few timestamps (NaN where there are fewer), hashes of the most
recent distinct IPs and codes of the most recent distinct countries (0 where there are fewer): what the
per-user features need, and nothing that grows with the history.

>>> empty_profiles().aligned(np.array(["a"], dtype=object))["recent_ts"].tolist()
[[nan, nan, nan, nan, nan]]
"""

from __future__ import annotations

import hashlib

import numpy as np

from shared.entity_state import EntityStates, StateLayout

RECENT_TIMESTAMPS = 5
"""How many of a user's latest timestamps a profile keeps (velocity: transactions in the last hour)."""

KNOWN_IPS = 8
"""How many of a user's most recent distinct IPs a profile keeps."""

KNOWN_COUNTRIES = 4
"""How many of a user's most recent distinct countries a profile keeps."""

MOMENTS = ("hour_cos_sum", "hour_sin_sum", "log_amount_sum", "log_amount_sq_sum")
"""Running sums of the hour-of-day vector and of log-amount and its square."""

PROFILE_LAYOUT = StateLayout(
    np.dtype(
        [
            ("count", "<f8"),
            ("amount_sum", "<f8"),
            ("amount_max", "<f8"),
            *((name, "<f8") for name in MOMENTS),
            ("recent_ts", "<f8", (RECENT_TIMESTAMPS,)),  # newest first, NaN-padded
            ("ips", "<u8", (KNOWN_IPS,)),  # hashes, most recent first, 0-padded
            ("countries", "<u2", (KNOWN_COUNTRIES,)),  # country_codes, most recent first, 0-padded
        ]
    ),
    fill={"recent_ts": np.nan},
)


def empty_profiles() -> EntityStates:
    return EntityStates.empty(PROFILE_LAYOUT)


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


def country_codes(countries: np.ndarray) -> np.ndarray:
    """Each two-letter country as a non-zero 16-bit code (its two bytes); 0 for "" (not given)."""
    distinct, inverse = np.unique(countries.astype(str), return_inverse=True)
    coded = np.array([int.from_bytes(code.encode()[:2], "big") for code in distinct.tolist()], dtype=np.uint16)
    return coded[inverse.reshape(-1)]
