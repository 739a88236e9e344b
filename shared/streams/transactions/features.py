"""Transaction features, with one definition for training (offline) and scoring (online).

Per-user behaviour features need each user's history. History is summarised in a profile record
(`shared.streams.transactions.profiles`: counts, amount sums, the last few timestamps, the most recent
distinct IPs and countries, the hour-of-day vector). `advance_profiles` takes the profiles as they were
before a batch and the batch's events, and returns every event's features (computed from the history
*before* that event) plus the profiles after the batch. Training calls it once over the whole
time-ordered history with empty profiles; a scoring worker calls it per micro-batch with the profiles it
keeps in Redis. Same function, so the two cannot drift.

>>> cols = TransactionColumns.from_arrays(
...     user_id=["a", "a", "b"], amount=[10.0, 100.0, 5.0],
...     timestamp_s=[0.0, 60.0, 30.0], ip=["1.1.1.1", "2.2.2.2", "3.3.3.3"],
...     transaction_type=["purchase"] * 3, channel=["web"] * 3, segment=["tight-passive"] * 3)
>>> raw, after = advance_profiles(EntityStates.empty(PROFILE_LAYOUT), cols)
>>> raw[:, FEATURE_NAMES.index("user_tx_count_log")].round(3).tolist()
[0.0, 0.693, 0.0]
>>> float(raw[1, FEATURE_NAMES.index("new_ip_for_user")]), after.keys.tolist(), after.records["count"].tolist()
(1.0, ['a', 'b'], [2.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from shared.entity_state import EntityStates
from shared.pipeline import ArrayColumns, FeatureSpec
from shared.sorted_runs import rank_within_runs
from shared.streams.transactions.contract import CHANNELS, SEGMENTS, TRANSACTION_TYPES, Transaction
from shared.streams.transactions.profiles import MOMENTS, PROFILE_LAYOUT, RECENT_TIMESTAMPS, country_codes, ip_hashes

FEATURE_SPEC_VERSION = 3
"""Bump when a feature's definition changes: a model trained on another spec is refused at load."""

AMOUNT_PRIOR_WEIGHT, AMOUNT_PRIOR_VARIANCE = 3.0, 0.25
"""A user's log-amount spread is shrunk toward a prior (sigma 0.5) worth 3 transactions: two equal
amounts must not make the third one look impossible."""

HOUR_PRIOR_WEIGHT, HOUR_PRIOR_VARIANCE = 3.0, 0.5
"""A user's circular variance of the hour of day is shrunk toward 0.5 (halfway to no habit) worth 3 transactions:
one earlier transaction is no habit yet."""

COUNTRY_HISTORY = 2
"""Earlier events a user needs before a country counts as new: after one event abroad, home is not news."""

NO_HISTORY_GAP_S = 30 * 86400.0
"""'Time since previous transaction' for a user's first one: as long as the training window."""

TRANSACTION_FEATURES = (
    "amount",
    "amount_log",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    *(f"type_{name}" for name in TRANSACTION_TYPES),
    *(f"channel_{name}" for name in CHANNELS),
    *(f"segment_{name}" for name in SEGMENTS),
)
USER_FEATURES = (
    "user_tx_count_log",
    "user_mean_amount_log",
    "user_max_amount_log",
    "seconds_since_prev_log",
    "amount_z_vs_user",
    "amount_vs_user_max",
    "new_ip_for_user",
    "new_ip_with_history",
    "user_tx_last_hour",
    "hour_off_user_habit",
    "new_country_for_user",
)
FEATURE_NAMES: tuple[str, ...] = (*TRANSACTION_FEATURES, *USER_FEATURES)
FEATURE_SPEC = FeatureSpec(FEATURE_SPEC_VERSION, FEATURE_NAMES)


@dataclass(frozen=True)
class TransactionColumns(ArrayColumns):
    """A batch of transactions as columns: what featurizing needs, in arrival order."""

    event_id: np.ndarray
    user_id: np.ndarray
    amount: np.ndarray
    timestamp_s: np.ndarray
    ip: np.ndarray
    transaction_type: np.ndarray
    channel: np.ndarray
    segment: np.ndarray
    country: np.ndarray  # "" where the event names none

    @classmethod
    def from_arrays(cls, **columns: ArrayLike) -> TransactionColumns:
        """Columns from arrays; without `event_id`, events are numbered by position; without `country`, none named."""
        amount = np.asarray(columns["amount"], dtype=np.float64)
        event_id, country = columns.get("event_id"), columns.get("country")
        return cls(
            event_id=np.asarray(event_id if event_id is not None else np.arange(len(amount)).astype(str), dtype=object),
            user_id=np.asarray(columns["user_id"], dtype=object),
            amount=amount,
            timestamp_s=np.asarray(columns["timestamp_s"], dtype=np.float64),
            ip=np.asarray(columns["ip"], dtype=object),
            transaction_type=np.asarray(columns["transaction_type"], dtype=object),
            channel=np.asarray(columns["channel"], dtype=object),
            segment=np.asarray(columns["segment"], dtype=object),
            country=_named(np.asarray(country if country is not None else np.full(len(amount), ""), dtype=object)),
        )

    @classmethod
    def from_events(cls, events: Sequence[Transaction]) -> TransactionColumns:
        # Struct attributes have no columnar view; one comprehension per column is the cheapest way out.
        return cls.from_arrays(
            event_id=[e.event_id for e in events],
            user_id=[e.user_id for e in events],
            amount=[e.amount for e in events],
            timestamp_s=[e.timestamp.timestamp() for e in events],
            ip=[e.ip for e in events],
            transaction_type=[e.transaction_type for e in events],
            channel=[e.channel for e in events],
            segment=[e.segment for e in events],
            country=[e.country or "" for e in events],
        )

    @property
    def entity(self) -> np.ndarray:
        return self.user_id

    @property
    def event_time_s(self) -> np.ndarray:
        return self.timestamp_s


def _named(countries: np.ndarray) -> np.ndarray:
    """None (no country named) as "", the form every other path gives it; a new array, the caller's stays."""
    return np.where(countries == None, "", countries).astype(object)  # noqa: E711 (elementwise over objects)


def _one_hot(values: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    return (values[:, None] == np.asarray(categories, dtype=object)[None, :]).astype(np.float64)


def _transaction_features(cols: TransactionColumns) -> np.ndarray:
    hour = (cols.timestamp_s % 86400.0) / 3600.0
    weekday = ((cols.timestamp_s // 86400.0) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour_angle, weekday_angle = 2 * np.pi * hour / 24.0, 2 * np.pi * weekday / 7.0
    return np.column_stack(
        [
            cols.amount,
            np.log1p(cols.amount),
            np.sin(hour_angle),
            np.cos(hour_angle),
            np.sin(weekday_angle),
            np.cos(weekday_angle),
            _one_hot(cols.transaction_type, TRANSACTION_TYPES),
            _one_hot(cols.channel, CHANNELS),
            _one_hot(cols.segment, SEGMENTS),
        ]
    )


def _segmented_exclusive_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """For each row, the sum of the earlier rows of its group (rows sorted by group; `group_start` per group).

    Each group is summed on its own, left to right, so a row's sum does not depend on which other groups
    share the batch: a whole-batch cumsum minus the group's start differs in its last bits with the batch's
    other entities, and the Spark path (entities spread over partitions) must give the batch mode's features
    bit for bit. Groups are padded into blocks of power-of-two widths: O(log longest group) numpy calls.
    """
    n = len(values)
    lengths = np.diff(np.append(group_start, n))
    out = np.zeros_like(values)
    width_class = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for width_log in np.unique(width_class).tolist():
        groups = np.flatnonzero(width_class == width_log)
        position = np.arange(1 << width_log)[None, :]
        rows = group_start[groups][:, None] + position
        inside = position < lengths[groups][:, None]
        block = np.where(inside, values[np.minimum(rows, n - 1)], 0.0)
        running = np.cumsum(block[:, :-1], axis=1)  # add.accumulate: strictly left to right
        out[rows[:, 1:][inside[:, 1:]]] = running[inside[:, 1:]]
    return out


def _segmented_exclusive_cummax(values: np.ndarray, group: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """For each row, the max of the earlier rows of its group (0 for a group's first row)."""
    # Ranks are exact integers, so lifting each group above the previous one cannot lose precision.
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(1, len(values) + 1)
    lifted = rank + group.astype(np.int64) * (len(values) + 1)
    running = np.maximum.accumulate(lifted)
    previous = np.concatenate([[0], running[:-1]]) - group.astype(np.int64) * (len(values) + 1)
    previous[group_start[group] == np.arange(len(values))] = 0
    sorted_values = np.concatenate([[0.0], values[order]])
    return sorted_values[np.maximum(previous, 0)]


def advance_profiles(before: EntityStates, cols: TransactionColumns) -> tuple[np.ndarray, EntityStates]:
    """Raw (unscaled) features of every event, and the profiles of the batch's users after it.

    Events of one user are taken in timestamp order; the feature rows come back in input order.
    """
    n = len(cols)
    if not n:
        return np.empty((0, len(FEATURE_NAMES))), EntityStates.empty(PROFILE_LAYOUT)
    users, group = np.unique(cols.user_id, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((cols.timestamp_s, group))
    g = group[order]
    ts, amount, ip = cols.timestamp_s[order], cols.amount[order], ip_hashes(cols.ip)[order]
    country = country_codes(cols.country)[order]
    first_of_group = np.ones(n, dtype=bool)
    first_of_group[1:] = g[1:] != g[:-1]
    group_start = np.flatnonzero(first_of_group)  # row where each group begins, indexed by group id
    rank_in_group = np.arange(n) - group_start[g]

    start = before.aligned(users)
    count = start["count"][g] + rank_in_group
    amount_sum = start["amount_sum"][g] + _segmented_exclusive_cumsum(amount, group_start)
    amount_max = np.maximum(start["amount_max"][g], _segmented_exclusive_cummax(amount, g, group_start))
    hour_angle = 2 * np.pi * ((ts % 86400.0) / 3600.0) / 24.0
    log_amount = np.log1p(amount)
    # Running sums of the hour-of-day vector and of log-amount and its square, per user.
    moment_terms = np.column_stack([np.cos(hour_angle), np.sin(hour_angle), log_amount, log_amount**2])
    init_moments = np.column_stack([start[name] for name in MOMENTS])
    moments = init_moments[g] + np.column_stack(
        [_segmented_exclusive_cumsum(moment_terms[:, k], group_start) for k in range(4)]
    )
    hour_vec, hour_sum = moment_terms[:, :2], moments[:, :2]

    # The k-th previous timestamp: an earlier event of this batch if there is one, else the profile's.
    previous_ts = np.empty((n, RECENT_TIMESTAMPS))
    for k in range(1, RECENT_TIMESTAMPS + 1):
        in_batch = rank_in_group >= k
        from_profile = np.clip(k - 1 - rank_in_group, 0, RECENT_TIMESTAMPS - 1)
        previous_ts[:, k - 1] = np.where(
            in_batch, ts[np.maximum(np.arange(n) - k, 0)], start["recent_ts"][g, from_profile]
        )
        previous_ts[~in_batch & (k - 1 - rank_in_group >= RECENT_TIMESTAMPS), k - 1] = np.nan

    # New IP: not among the user's KNOWN_IPS most recent distinct IPs before this event.
    new_ip = ~_recently_used(g, ip, start["ips"][g], group_start) & (count > 0)
    # New country: as a new IP, for users with at least COUNTRY_HISTORY earlier events who named a country before.
    named_before = (start["countries"][g] != 0).any(axis=1) | (
        _segmented_exclusive_cumsum((country != 0).astype(np.float64), group_start) > 0
    )
    new_country = ~_recently_used(g, country, start["countries"][g], group_start) & (country != 0) & named_before
    new_country &= count >= COUNTRY_HISTORY

    has_history = count > 0
    history = np.maximum(count, 1)
    mean = np.where(has_history, amount_sum / history, 0.0)
    log_mean = moments[:, 2] / history
    log_variance = np.maximum(moments[:, 3] / history - log_mean**2, 0.0)
    shrunk_variance = (count * log_variance + AMOUNT_PRIOR_WEIGHT * AMOUNT_PRIOR_VARIANCE) / (
        count + AMOUNT_PRIOR_WEIGHT
    )
    gap = np.where(np.isnan(previous_ts[:, 0]), NO_HISTORY_GAP_S, np.maximum(ts - previous_ts[:, 0], 0.0))
    last_hour = np.nansum((ts[:, None] - previous_ts) <= 3600.0, axis=1)
    # The hour's circular deviation from the user's mean hour, 1 - cos(angle), in units of the user's circular
    # variance 1 - R (shrunk toward a prior as the amount's spread is): about 1 for a usual hour.
    habit = hour_sum / np.maximum(count, 1)[:, None]
    resultant = np.hypot(habit[:, 0], habit[:, 1])
    deviation = 1.0 - (habit * hour_vec).sum(axis=1) / np.maximum(resultant, 1e-12)
    shrunk_circular_variance = (count * (1.0 - resultant) + HOUR_PRIOR_WEIGHT * HOUR_PRIOR_VARIANCE) / (
        count + HOUR_PRIOR_WEIGHT
    )
    hour_off_habit = np.where(has_history & (resultant > 1e-12), deviation / shrunk_circular_variance, 0.0)
    user_features = np.column_stack(
        [
            np.log1p(count),
            np.log1p(mean),
            np.log1p(amount_max),
            np.log1p(gap),
            np.where(has_history, (log_amount - log_mean) / np.sqrt(shrunk_variance), 0.0),
            np.where(has_history, log_amount - np.log1p(amount_max), 0.0),
            new_ip.astype(np.float64),
            new_ip * np.log1p(count),
            last_hour.astype(np.float64),
            hour_off_habit,
            new_country.astype(np.float64),
        ]
    )
    rows = np.empty((n, len(FEATURE_NAMES)))
    rows[order] = np.hstack([_transaction_features(cols)[order], user_features])

    last = np.append(group_start[1:], n) - 1  # each user's last row
    after = PROFILE_LAYOUT.empty(len(users))
    after["count"] = count[last] + 1
    after["amount_sum"] = amount_sum[last] + amount[last]
    after["amount_max"] = np.maximum(amount_max[last], amount[last])
    for k, name in enumerate(MOMENTS):
        after[name] = moments[last, k] + moment_terms[last, k]
    after["recent_ts"] = _newest_first(ts, last, start["recent_ts"], rank_in_group[last] + 1)
    after["ips"] = _recent_distinct(g, ip, rank_in_group, last, start["ips"])
    after["countries"] = _recent_distinct(g, country, rank_in_group, last, start["countries"])
    return rows, EntityStates(PROFILE_LAYOUT, users, after)


def _newest_first(ts: np.ndarray, last: np.ndarray, stored: np.ndarray, batch_count: np.ndarray) -> np.ndarray:
    """Each user's RECENT_TIMESTAMPS latest timestamps: the batch's newest, then the stored ones."""
    k = np.arange(RECENT_TIMESTAMPS)[None, :]
    from_batch = k < batch_count[:, None]
    batch_values = ts[np.maximum(last[:, None] - k, 0)]
    stored_at = np.clip(k - batch_count[:, None], 0, RECENT_TIMESTAMPS - 1)
    return np.where(from_batch, batch_values, np.take_along_axis(stored, stored_at, axis=1))


def _recently_used(g: np.ndarray, values: np.ndarray, known: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Rows whose value is among their user's most recent distinct non-zero values before them, as many as the
    profile keeps (`known`: each row's user's stored values, (n, slots), most recent first, 0-padded).

    The list a profile keeps, so any batching gives the same answer: before row i it is the distinct values of
    the user's earlier rows in this batch, most recent first, then the stored values not among them. Rows come
    grouped by user (`g`, ascending; `group_start` each group's first row) and in time order within a user.
    """
    n, slots = known.shape
    order = np.lexsort((values, g))  # stable: a (user, value) pair's rows stay in time order
    same_pair = np.r_[False, (g[order][1:] == g[order][:-1]) & (values[order][1:] == values[order][:-1])]
    previous = np.full(n, -1)  # the row of the pair's previous use in this batch
    previous[order[same_pair]] = order[np.flatnonzero(same_pair) - 1]
    named = values != 0
    recent = np.zeros(n, dtype=bool)

    # Used earlier in the batch at row j: recent while fewer than `slots` distinct values came between j and i
    # (a row p between them brings a value first when its own previous use is at or before j).
    reused = np.flatnonzero(named & (previous >= 0))
    near = reused - previous[reused] <= slots  # fewer rows between than slots: fewer distinct values too
    recent[reused[near]] = True
    alive = reused[~near]
    since, distinct = previous[alive], np.zeros(alive.size, dtype=np.int64)
    step = 1
    while alive.size:  # one pass per row of distance, over the rows still undecided
        between = alive - step
        closed = between <= since
        recent[alive[closed]] = distinct[closed] < slots
        alive, since, distinct, between = alive[~closed], since[~closed], distinct[~closed], between[~closed]
        distinct += named[between] & (previous[between] <= since)
        undecided = distinct < slots
        alive, since, distinct = alive[undecided], since[undecided], distinct[undecided]
        step += 1

    # First use in the batch: recent when stored at slot k and the batch's distinct values before this row,
    # together with the stored values ahead of slot k, number fewer than `slots` (always, with no batch value
    # before it: most rows of a worker's batch).
    first = named & (previous < 0)
    is_stored = (known == values[:, None]) & (known != 0)
    recent[first] = is_stored[first].any(axis=1)
    batch_distinct = _segmented_exclusive_cumsum(first.astype(np.float64), group_start)
    check = np.flatnonzero(first & recent & (batch_distinct > 0))
    if check.size:
        first_rows = np.flatnonzero(first)
        codes = np.unique(np.r_[values[first_rows], known[check].ravel()], return_inverse=True)[1].astype(np.uint64)
        pair_key = (g[first_rows].astype(np.uint64) << np.uint64(32)) | codes[: first_rows.size]
        stored_key = (g[check].astype(np.uint64)[:, None] << np.uint64(32)) | codes[first_rows.size :].reshape(
            -1, slots
        )
        by_key = np.argsort(pair_key)
        at = np.minimum(np.searchsorted(pair_key[by_key], stored_key), first_rows.size - 1)
        used_before = (pair_key[by_key][at] == stored_key) & (first_rows[by_key][at] < check[:, None])
        slot = np.argmax(is_stored[check], axis=1)
        ahead = np.arange(slots)[None, :] < slot[:, None]
        recent[check] = batch_distinct[check] + slot - (used_before & ahead & (known[check] != 0)).sum(axis=1) < slots
    return recent


def _recent_distinct(
    g: np.ndarray, values: np.ndarray, rank_in_group: np.ndarray, last: np.ndarray, stored: np.ndarray
) -> np.ndarray:
    """Each user's most recent distinct non-zero values (as many as `stored` has slots): the batch's (newest
    first), then the stored ones."""
    batch_count = rank_in_group[last] + 1
    slots = stored.shape[1]
    user = np.concatenate([g, np.repeat(np.arange(len(last)), slots)])
    value = np.concatenate([values, stored.reshape(-1)])
    recency = np.concatenate(  # 0 for a user's newest event; stored values come after the batch's
        [batch_count[g] - 1 - rank_in_group, (batch_count[:, None] + np.arange(slots)).reshape(-1)]
    )
    # Keep each (user, value) pair's most recent use, then rank the survivors by recency per user.
    order = np.lexsort((recency, value, user))
    user, value, recency = user[order], value[order], recency[order]
    keep = (value != 0) & np.r_[True, (user[1:] != user[:-1]) | (value[1:] != value[:-1])]
    user, value, recency = user[keep], value[keep], recency[keep]
    order = np.lexsort((recency, user))
    user, value = user[order], value[order]
    slot = rank_within_runs(user)
    recent = np.zeros((len(last), slots), dtype=stored.dtype)
    recent[user[slot < slots], slot[slot < slots]] = value[slot < slots]
    return recent
