"""Sessions of log lines and their features: template-count vectors that grow line by line.

A session is the lines of one key (the producer's session id, a block id found in the message, or a host's
fixed time window: `SessionRule`; a host's sliding windows are `host_windows.py`'s). Its state is one
fixed-size record: how often each of the vocabulary's most frequent templates occurred (`COUNT_SLOTS`, the last
slot for all rarer ones), lines, unseen lines, the rarest template so far, first and last time, and whether it
is still open. A session closes after `idle_timeout_s` without a line, after `max_lines` lines, on one of the
rule's end templates, or on an end-of-session record (`LogLine.ends_session`: the producer, or a file's end,
says the session is complete); the next line of that key opens a new one.

An end-of-session record is not a line: it counts nothing, and it is scored with the complete session
(`session_closed` 1, and the key `end_key` after the session's last keys), so a session that stops early,
each of whose prefixes looks normal, is seen at its end: complete normal sessions are what training saw
closed.

Every line is scored with its session as it stands after the line (the session's count vector so far, plus
the line's own rarity), and with the keys of its last `HISTORY_KEYS` lines (what DeepLog reads), so an
anomalous session alerts at the line that makes it anomalous, before it closes,
and a session's verdict is the most anomalous of its lines. Training sees every prefix of every normal
session, so a session that is merely young is not unusual.

>>> from shared.streams.logs.templates import TemplateVocabulary
>>> vocabulary = TemplateVocabulary.mine(["open file 1", "read file 2", "read file 3", "close file 4"])
>>> how = Featurization.of(vocabulary, SessionRule(end_templates=("close file <NUM>",)))
>>> lines = ["open file 7", "read file 7", "close file 7", "open file 8"]
>>> keys = np.array(["s"] * 4, dtype=object)
>>> before = EntityStates.empty(SESSION_LAYOUT)
>>> raw, after = advance_sessions(before, keys, np.arange(4.0), vocabulary.match(lines), how)
>>> raw[:, FEATURE_NAMES.index("session_lines")].tolist()  # the close ends the first session
[1.0, 2.0, 3.0, 1.0]
>>> bool(after.records["open"][0]), int(after.records["lines"][0])
(True, 1)
>>> templates = np.r_[vocabulary.match(lines[1:2]), SESSION_END]  # a line, then its session's end record
>>> raw, after = advance_sessions(after, keys[:2], np.r_[4.0, 4.0], templates, how)
>>> raw[:, FEATURE_NAMES.index("session_lines")].tolist(), raw[:, FEATURE_NAMES.index("session_closed")].tolist()
([2.0, 2.0], [0.0, 1.0])
>>> raw[1, FEATURE_NAMES.index("key")] == how.end_key, bool(after.records["open"][0])
(np.True_, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from shared.entity_state import EntityStates, StateLayout
from shared.pipeline import FeatureSpec
from shared.streams.logs.templates import SESSION_END, UNSEEN, TemplateVocabulary

COUNT_SLOTS = 64
"""Template-count columns: the 63 most frequent training templates one each, every rarer one in the last."""

HISTORY_KEYS = 10
"""Template keys of a session's previous lines kept in its state and given to sequence models (DeepLog's h)."""

SESSION_LAYOUT = StateLayout(
    np.dtype(
        [
            ("counts", "<f4", (COUNT_SLOTS,)),
            ("lines", "<f8"),
            ("unseen", "<f8"),
            ("max_rarity", "<f8"),
            ("first_s", "<f8"),
            ("last_s", "<f8"),
            ("open", "u1"),
            ("recent", "<i4", (HISTORY_KEYS,)),  # keys of the last lines, the newest last; 0 = none
        ]
    )
)

COUNT_FEATURES = (*(f"template_{slot:02d}" for slot in range(COUNT_SLOTS - 1)), "template_rarer")
SESSION_FEATURES = ("session_lines", "session_unseen", "session_seconds", "session_max_rarity", "session_closed")
LINE_FEATURES = ("line_unseen", "line_rarity")
KEY_FEATURES = (*(f"key_lag_{lag:02d}" for lag in range(HISTORY_KEYS, 0, -1)), "key")
"""A line's key (its template's index + 1; the vocabulary's size + 1 when unseen; size + 2 for an end-of-session
record) after the keys of the session's previous lines, oldest first (0 where the session has fewer lines)."""
FEATURE_NAMES = COUNT_FEATURES + SESSION_FEATURES + LINE_FEATURES + KEY_FEATURES
SESSION_SECONDS = FEATURE_NAMES.index("session_seconds")
FEATURE_SPEC = FeatureSpec(3, FEATURE_NAMES)  # 3: end-of-session records (session_closed)

HostWindows = Literal["fixed", "sliding"]
"""How lines with neither a session id nor a match of the rule's pattern are grouped: the host's fixed windows
(sessions keyed `host@start`), or each line with its host's last `window_s` seconds (`host_windows.py`)."""


@dataclass(frozen=True)
class SessionRule:
    """How lines become sessions: kept inside the version, so training and serving group lines alike."""

    pattern: str | None = r"blk_-?\d+"  # the first match in a line without session_id is its session key
    window_s: float = 300.0  # lines with neither: the host's windows of this many seconds
    idle_timeout_s: float = 1800.0
    max_lines: int = 10_000
    end_templates: tuple[str, ...] = ()  # templates (as mined, e.g. "Deleting block <BLK> file <*>") that close
    host_windows: HostWindows = "fixed"

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.idle_timeout_s <= 0 or self.max_lines < 1:
            raise ValueError("window_s and idle_timeout_s must be positive and max_lines at least 1")
        if self.host_windows not in get_args(HostWindows):
            raise ValueError(f"host_windows must be 'fixed' or 'sliding'; got {self.host_windows!r}")


@dataclass(frozen=True)
class Featurization:
    """What `advance_sessions` needs from the vocabulary and the rule, as arrays indexed by template."""

    slot: np.ndarray  # template index -> count slot
    rarity: np.ndarray  # template index -> -log10(share of training lines); the last entry is for unseen lines
    ends: np.ndarray  # template index -> closes its session; the last entry (unseen) is False
    key: np.ndarray  # template index -> key (index + 1); the last entry (unseen) is the vocabulary's size + 1
    end_key: int  # an end-of-session record's key: the vocabulary's size + 2
    idle_timeout_s: float
    max_lines: int
    window_s: float

    @classmethod
    def of(cls, vocabulary: TemplateVocabulary, rule: SessionRule) -> Featurization:
        count = len(vocabulary.templates)
        total = float(vocabulary.counts.sum())
        shares = vocabulary.counts / max(total, 1.0)
        unseen_share = 1.0 / (total + 1.0)  # rarer than anything training saw once
        ends = np.array([template in rule.end_templates for template in vocabulary.templates] + [False])
        return cls(
            slot=np.minimum(np.arange(count), COUNT_SLOTS - 1),
            rarity=-np.log10(np.r_[shares, unseen_share]),
            ends=ends,
            key=np.r_[np.arange(1, count + 1), count + 1].astype(np.int64),
            end_key=count + 2,
            idle_timeout_s=rule.idle_timeout_s,
            max_lines=rule.max_lines,
            window_s=rule.window_s,
        )


def advance_sessions(
    before: EntityStates,
    keys: np.ndarray,
    times: np.ndarray,
    templates: np.ndarray,
    how: Featurization,
) -> tuple[np.ndarray, EntityStates]:
    """Every row's features (its session after the row) and the sessions' states after the batch, in the layout
    of `before` (fields beyond `SESSION_LAYOUT`'s left empty); a row is a line, or an end-of-session record where
    its template is `SESSION_END`.

    An end record dated more than the idle timeout before the first line of the session it would end belongs to
    an earlier session: the end a worker wrote for an idle session, read after a newer line of its key that a
    backlog held ahead of it (that line opened the next session). It is scored as the end of an empty session
    and leaves the open one alone; until 2026-12-02 it ended that session after its first line."""
    raw, after = _advance_runs(before, keys, times, templates, how)
    stale = (templates == SESSION_END) & (raw[:, SESSION_SECONDS] < -how.idle_timeout_s)
    if not stale.any():
        return raw, after
    kept = ~stale
    raw[kept], kept_after = _advance_runs(before, keys[kept], times[kept], templates[kept], how)
    raw[stale], _ = _advance_runs(EntityStates.empty(before.layout), keys[stale], times[stale], templates[stale], how)
    records = before.aligned(after.keys)  # an entity with stale end records only keeps its state
    records[np.searchsorted(after.keys, kept_after.keys)] = kept_after.records
    return raw, EntityStates(before.layout, after.keys, records)


def _advance_runs(
    before: EntityStates,
    keys: np.ndarray,
    times: np.ndarray,
    templates: np.ndarray,
    how: Featurization,
) -> tuple[np.ndarray, EntityStates]:
    """`advance_sessions`, taking every end record as its key's current session's end.

    Vectorized over the batch: rows are grouped by key (stable, so each key's rows keep their order),
    session starts are found from the carried state, idle gaps, end templates and records, and the length
    cap, and counts are cumulative sums within sessions."""
    n = len(keys)
    entities, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    group = inverse[order]
    t = times[order].astype(np.float64)
    template = templates[order]
    ends = template == SESSION_END
    is_line = ~ends
    unseen = (template == UNSEEN) & is_line
    line_template = np.where(is_line, template, UNSEEN)
    rarity = np.where(is_line, how.rarity[line_template], 0.0)  # UNSEEN (-1) picks the last entry
    closes = how.ends[line_template] | ends
    start_states = before.aligned(entities)

    group_first = np.r_[True, group[1:] != group[:-1]] if n else np.zeros(0, dtype=bool)
    carried = start_states[group]  # each row's key's state before the batch
    gap_from_state = t - carried["last_s"]
    continues_state = group_first & (carried["open"] == 1) & (gap_from_state <= how.idle_timeout_s)
    natural_break = np.zeros(n, dtype=bool)
    natural_break[1:] = ~group_first[1:] & ((t[1:] - t[:-1] > how.idle_timeout_s) | closes[:-1])
    natural_break |= group_first & ~continues_state
    # Within a run between natural breaks, every max_lines-th line (counting lines carried from the state)
    # opens a new session; an end-of-session record never does.
    run_first = natural_break | group_first
    run = np.cumsum(run_first) - 1
    run_start = np.flatnonzero(run_first)
    carry = np.where(continues_state[run_start], carried["lines"][run_start], 0.0)
    position = _within_sessions(is_line.astype(np.float64), run, run_start) - is_line + carry[run]
    length_break = (position % how.max_lines == 0) & (position > 0) & is_line
    starts = run_first | length_break
    session = np.cumsum(starts) - 1
    session_start = np.flatnonzero(starts)
    from_state = continues_state[session_start] & ~length_break[session_start]

    counts = np.zeros((n, COUNT_SLOTS), dtype=np.float32)
    seen_rows = np.flatnonzero(~unseen & is_line)
    counts[seen_rows, how.slot[template[seen_rows]]] = 1.0
    counts = _within_sessions(counts, session, session_start)
    lines = _within_sessions(is_line.astype(np.float64), session, session_start)
    unseen_lines = _within_sessions(unseen.astype(np.float64), session, session_start)
    max_rarity = running_max_within_groups(rarity, session)
    first_s = t[session_start][session]

    base = carried[session_start]  # a session that continues its key's state starts from it
    continuing = from_state[session]
    base_rows = base[session]
    counts[continuing] += base_rows["counts"][continuing]
    lines = lines + np.where(continuing, base_rows["lines"], 0.0)
    unseen_lines = unseen_lines + np.where(continuing, base_rows["unseen"], 0.0)
    max_rarity = np.where(continuing, np.maximum(max_rarity, base_rows["max_rarity"]), max_rarity)
    first_s = np.where(continuing, base_rows["first_s"], first_s)

    key = np.where(ends, how.end_key, how.key[line_template])
    history = _previous_keys(key, session, session_start, continuing, base_rows["recent"])
    sorted_raw = np.column_stack(
        [
            counts, lines, unseen_lines, t - first_s, max_rarity, ends.astype(np.float64),
            unseen.astype(np.float64), rarity, history, key,
        ]
    )  # fmt: skip
    raw = np.empty_like(sorted_raw)
    raw[order] = sorted_raw

    last = np.r_[np.flatnonzero(group_first)[1:] - 1, n - 1] if n else np.zeros(0, dtype=np.int64)
    after = before.layout.empty(len(entities))
    after["counts"] = counts[last]
    after["lines"] = lines[last]
    after["unseen"] = unseen_lines[last]
    after["max_rarity"] = max_rarity[last]
    after["first_s"] = first_s[last]
    after["last_s"] = t[last]
    after["open"] = ~closes[last] & (lines[last] % how.max_lines != 0)
    after["recent"] = np.column_stack([history[last, 1:], key[last]]) if n else after["recent"]
    return raw, EntityStates(before.layout, entities, after)


def _previous_keys(
    key: np.ndarray, session: np.ndarray, session_start: np.ndarray, continuing: np.ndarray, carried: np.ndarray
) -> np.ndarray:
    """Each row's previous `HISTORY_KEYS` keys in its session, oldest first: from earlier rows of the batch,
    then from the state the session continues (its `recent` keys), else 0."""
    n = len(key)
    position = np.arange(n) - session_start[session]  # rows of this session earlier in the batch
    history = np.zeros((n, HISTORY_KEYS), dtype=np.int64)
    for column, lag in enumerate(range(HISTORY_KEYS, 0, -1)):  # HISTORY_KEYS vectorized passes, not per row
        in_batch = lag <= position
        history[in_batch, column] = key[np.flatnonzero(in_batch) - lag]
        from_state = ~in_batch & continuing
        history[from_state, column] = carried[from_state, HISTORY_KEYS - (lag - position[from_state])]
    return history


def _within_sessions(values: np.ndarray, session: np.ndarray, session_start: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each session (rows are grouped by session, in order)."""
    total = np.cumsum(values, axis=0)
    before_start = np.concatenate([np.zeros((1, *values.shape[1:]), dtype=total.dtype), total])[session_start]
    return total - before_start[session]


def running_max_within_groups(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running maximum restarting at each group (rows sorted by group), exactly: ranks of the values are made to
    grow from group to group by an integer offset, so one accumulate serves every group."""
    if not len(values):
        return values.astype(np.float64)
    distinct, rank = np.unique(values, return_inverse=True)
    offset = group.astype(np.int64) * len(distinct)
    return distinct[np.maximum.accumulate(rank.reshape(-1) + offset) - offset]
