"""The Redis entity-state store on a real Redis: round trip, replays start from the snapshot, zombies are refused."""

from __future__ import annotations

import numpy as np
import redis

from shared.entity_state import EntityStates
from shared.state_store import EntityStateStore
from shared.streams.transactions.features import TransactionColumns, advance_profiles
from shared.streams.transactions.profiles import empty_profiles
from shared.streams.transactions.stream import TRANSACTIONS


def batch(users: list[str], amounts: list[float], start_s: float) -> TransactionColumns:
    return TransactionColumns.from_arrays(
        user_id=users, amount=amounts, timestamp_s=[start_s + i for i in range(len(users))],
        ip=[f"10.0.0.{i}" for i in range(len(users))], transaction_type=["purchase"] * len(users),
        channel=["web"] * len(users), segment=["tight-passive"] * len(users),
    )  # fmt: skip


def apply(store: EntityStateStore, cols: TransactionColumns, partition: int, first: int) -> tuple[EntityStates, int]:
    """One worker batch: read, advance, write; offsets first.. per event, all users on one partition."""
    users, inverse = np.unique(cols.user_id, return_inverse=True)
    offsets = first + np.arange(len(cols))
    first_per_user = np.full(len(users), np.iinfo(np.int64).max)
    last_per_user = np.full(len(users), -1)
    np.minimum.at(first_per_user, inverse, offsets)
    np.maximum.at(last_per_user, inverse, offsets)
    partitions = np.full(len(users), partition)
    start = store.read(users, partitions, first_per_user)
    _, after = advance_profiles(start, cols)
    return after, store.write(after, start, partitions, first_per_user, last_per_user)


def test_profiles_round_trip_and_replays_do_not_count_twice(redis_client: redis.Redis, unique_name: str) -> None:
    store = EntityStateStore(redis_client, f"{unique_name}:", TRANSACTIONS)
    first, _ = apply(store, batch(["a", "b", "a"], [10.0, 20.0, 30.0], 0.0), partition=0, first=0)
    stored = store.read(np.array(["a", "b", "c"], dtype=object), np.zeros(3, dtype=np.int64), np.full(3, 3))
    assert stored.keys.tolist() == ["a", "b"]
    assert stored.records.tobytes() == first.records.tobytes()

    second, refused = apply(store, batch(["a"], [40.0], 100.0), partition=0, first=3)
    assert refused == 0 and second.records["count"].tolist() == [3.0]
    # The same batch again (its transaction aborted): it starts from the snapshot, so "a" still has 3 events.
    replayed, refused = apply(store, batch(["a"], [40.0], 100.0), partition=0, first=3)
    assert refused == 0 and replayed.records.tobytes() == second.records.tobytes()


def test_a_zombie_writing_an_older_batch_is_refused(redis_client: redis.Redis, unique_name: str) -> None:
    store = EntityStateStore(redis_client, f"{unique_name}:", TRANSACTIONS)
    apply(store, batch(["a"], [10.0], 0.0), partition=2, first=0)
    newer, _ = apply(store, batch(["a"], [20.0], 10.0), partition=2, first=1)
    # A fenced worker still holding the batch at offset 0 tries to write after the newer batch landed.
    start = empty_profiles()
    _, stale = advance_profiles(start, batch(["a"], [10.0], 0.0))
    one = np.zeros(1, dtype=np.int64)
    assert store.write(stale, start, one + 2, one, one) == 1
    kept = store.read(np.array(["a"], dtype=object), one + 2, one + 2)
    assert kept.records.tobytes() == newer.records.tobytes()


def test_a_state_stored_by_a_build_with_another_layout_is_ignored_not_misread(
    redis_client: redis.Redis, unique_name: str
) -> None:
    store = EntityStateStore(redis_client, f"{unique_name}:", TRANSACTIONS)
    apply(store, batch(["a", "b"], [10.0, 20.0], 0.0), partition=0, first=0)
    (key_of_b,) = [key for key in redis_client.keys(f"{unique_name}:*") if key.endswith(b":b")]
    redis_client.set(key_of_b, b"x" * 904)  # what an older layout of the record left behind
    stored = store.read(np.array(["a", "b"], dtype=object), np.zeros(2, dtype=np.int64), np.full(2, 5))
    assert stored.keys.tolist() == ["a"]  # "b" starts afresh; "a" is read as stored
