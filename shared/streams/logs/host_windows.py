"""Sliding time windows of a host's lines (`SessionRule(host_windows="sliding")`): a line with neither a session
id nor a match of the rule's pattern is scored with its host's lines of the last `window_s` seconds, itself
included, keyed by the host alone.

A window is a session that never closes: its features are the session features of the lines in it (template
counts, lines, unseen lines, seconds since its oldest line, the rarest template, the keys of its previous lines
in it), so the detectors are those of sessions. A host's state is a ring of its most recent lines (each one's
time and template key, the newest last): what the next batch needs to drop the lines that expired. A window
holds at most `RING_LINES` lines, in training as in serving: a host busier than that is scored with its last
`RING_LINES` lines, fewer than `window_s` seconds of them. A window has no idle deadline and never gets an end
record; an end-of-session record keyed by a host (no session id, no pattern match) is scored with the window
at its time and changes nothing. A line older than its host's newest one joins the window of the newest.

One state layout serves a sliding stream's sessions and windows: `SLIDING_LAYOUT`, the session record with the
ring, which a session leaves empty (the engine keeps one layout per stream; a fixed-window stream keeps the
smaller `SESSION_LAYOUT`).

>>> from shared.streams.logs.sessions import FEATURE_NAMES, Featurization, SessionRule
>>> from shared.streams.logs.templates import TemplateVocabulary
>>> vocabulary = TemplateVocabulary.mine(["open file 1", "read file 2"])
>>> how = Featurization.of(vocabulary, SessionRule(window_s=25, host_windows="sliding"))
>>> hosts = np.array(["dn-1"] * 5, dtype=object)
>>> raw, after = advance_host_windows(
...     EntityStates.empty(SLIDING_LAYOUT), hosts, np.arange(5) * 10.0, vocabulary.match(["read file 7"] * 5), how
... )
>>> raw[:, FEATURE_NAMES.index("session_lines")].tolist()  # a line is in the windows of the next two
[1.0, 2.0, 3.0, 3.0, 3.0]
>>> ring = after.records[0]  # the lines the next batch may still count (later than 40 - 25), after an empty slot
>>> ring["ring_s"][-4:].tolist(), ring["ring_key"][-4:].tolist()
([0.0, 20.0, 30.0, 40.0], [0, 2, 2, 2])
"""

from __future__ import annotations

import numpy as np

from shared.entity_state import EntityStates, StateLayout
from shared.streams.logs.sessions import (
    COUNT_SLOTS,
    FEATURE_NAMES,
    HISTORY_KEYS,
    SESSION_LAYOUT,
    Featurization,
    advance_sessions,
    running_max_within_groups,
)
from shared.streams.logs.templates import SESSION_END, UNSEEN

RING_LINES = 512
"""A host's most recent lines kept in its state: the most one window holds."""

SLIDING_LAYOUT = StateLayout(
    np.dtype(
        [
            *SESSION_LAYOUT.dtype.descr,
            ("ring_s", "<f8", (RING_LINES,)),  # times of the host's recent lines, the newest last
            ("ring_key", "<i4", (RING_LINES,)),  # their template keys; 0 = none (a session's ring is all 0)
        ]
    )
)


def advance_sessions_and_host_windows(
    before: EntityStates,
    keys: np.ndarray,
    times: np.ndarray,
    templates: np.ndarray,
    by_host: np.ndarray,
    how: Featurization,
) -> tuple[np.ndarray, EntityStates]:
    """Rows keyed by a session (`by_host` False) advance their sessions, rows keyed by their host its sliding
    window; both kinds of state in `SLIDING_LAYOUT`. A session id equal to a host's name would share its state."""
    session_rows, host_rows = np.flatnonzero(~by_host), np.flatnonzero(by_host)
    session_raw, sessions = advance_sessions(
        before, keys[session_rows], times[session_rows], templates[session_rows], how
    )
    window_raw, windows = advance_host_windows(before, keys[host_rows], times[host_rows], templates[host_rows], how)
    raw = np.empty((len(keys), len(FEATURE_NAMES)))
    raw[session_rows], raw[host_rows] = session_raw, window_raw
    after = EntityStates.of(
        SLIDING_LAYOUT,
        np.concatenate([sessions.keys, windows.keys]),
        np.concatenate([sessions.records, windows.records]),
    )
    return raw, after


def advance_host_windows(
    before: EntityStates, hosts: np.ndarray, times: np.ndarray, templates: np.ndarray, how: Featurization
) -> tuple[np.ndarray, EntityStates]:
    """Every row's features (the window of its host's lines ending at it) and the hosts' rings after the batch.

    Vectorized over the batch: each host's carried ring, then its rows in order, form one sequence sorted by
    host; a window is a range of that sequence's lines, found by searchsorted on the lines' times (made
    non-decreasing per host), and counted by cumulative sums."""
    n = len(hosts)
    distinct_hosts, inverse = np.unique(hosts, return_inverse=True)
    ring = before.aligned(distinct_hosts)
    carried_host, carried_slot = np.nonzero(ring["ring_key"])  # each host's ring, oldest first
    host = np.r_[carried_host, inverse.reshape(-1)]
    order = np.argsort(host, kind="stable")
    host = host[order]
    known = len(how.key) - 1  # a line's index: its template's, `known` for an unseen line (key = index + 1)
    index = np.r_[ring["ring_key"][carried_host, carried_slot] - 1, np.where(templates == UNSEEN, known, templates)]
    index = index[order]
    is_line = np.r_[np.ones(len(carried_host), dtype=bool), templates != SESSION_END][order]
    t = np.r_[ring["ring_s"][carried_host, carried_slot], times.astype(np.float64)][order]
    clock = running_max_within_groups(np.where(is_line, t, -np.inf), host)  # a line at its host's newest time
    now = np.where(is_line, clock, np.maximum(clock, t))  # an end record counts nothing, and moves no clock

    lines_at = np.flatnonzero(is_line)
    line_host, line_s, line_index = host[lines_at], clock[lines_at], index[lines_at]
    stop = np.cumsum(is_line)  # lines up to each row: a row's window is lines [start, stop)
    start = np.minimum(_first_line_after(line_host, line_s, host, now - how.window_s), stop)
    start = np.maximum(start, stop - RING_LINES)

    rows = np.empty(n, dtype=np.int64)  # the sequence position of each input row
    rows[order[order >= len(carried_host)] - len(carried_host)] = np.flatnonzero(order >= len(carried_host))
    start, stop, row_is_line = start[rows], stop[rows], is_line[rows]
    seen = line_index < known
    hits = np.zeros((len(lines_at), COUNT_SLOTS), dtype=np.int32)
    hits[np.flatnonzero(seen), how.slot[line_index[seen]]] = 1
    counts = _window_sums(hits, start, stop).astype(np.float32)
    unseen = _window_sums(~seen, start, stop)
    lines = stop - start
    seconds = np.where(lines > 0, now[rows] - np.r_[line_s, 0.0][start], 0.0)
    max_rarity = _window_max(how.rarity[line_index], start, stop)
    row_index = np.where(row_is_line, index[rows], known)  # an end record as an unseen line, then masked
    line_unseen = (row_index == known) & row_is_line
    rarity = np.where(row_is_line, how.rarity[row_index], 0.0)
    key = np.where(row_is_line, row_index + 1, how.end_key)
    history = np.zeros((n, HISTORY_KEYS), dtype=np.int64)
    own = stop - row_is_line  # a line's own place among the lines; an end record's is after the last
    for column, lag in enumerate(range(HISTORY_KEYS, 0, -1)):  # HISTORY_KEYS vectorized passes, not per row
        earlier = own - lag >= start
        history[earlier, column] = line_index[(own - lag)[earlier]] + 1
    raw = np.column_stack([counts, lines, unseen, seconds, max_rarity, ~row_is_line, line_unseen, rarity, history, key])
    return raw, _rings(distinct_hosts, line_host, line_s, line_index, how.window_s)


def _first_line_after(line_host: np.ndarray, line_s: np.ndarray, host: np.ndarray, after_s: np.ndarray) -> np.ndarray:
    """Per row, the first line of its host later than `after_s` (the host's line end if none): one searchsorted
    over the lines ordered by (host, time rank), exact in float time."""
    distinct = np.unique(line_s)
    width = len(distinct) + 1
    line_order = line_host.astype(np.int64) * width + np.searchsorted(distinct, line_s)
    wanted = host.astype(np.int64) * width + np.searchsorted(distinct, after_s, side="right")
    return np.searchsorted(line_order, wanted)


def _window_sums(values: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Sums of `values` (rows are lines) over each window's lines [start, stop), by cumulative sums."""
    total = np.cumsum(values, axis=0, dtype=np.int32)
    total = np.concatenate([np.zeros((1, *values.shape[1:]), dtype=np.int32), total])
    return total[stop] - total[start]


def _window_max(values: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The maximum of non-negative `values` over each window's lines [start, stop), 0 for an empty window: a sparse
    table (maxima of runs of 1, 2, 4, ... lines; windows are at most `RING_LINES` long), one pass per level."""
    length = stop - start
    level = np.zeros(len(length), dtype=np.int64)
    level[length > 0] = np.floor(np.log2(length[length > 0])).astype(np.int64)
    runs, result = values.astype(np.float64), np.zeros(len(length))
    for k in range(int(level.max(initial=0)) + 1):
        if k:
            span = 1 << (k - 1)
            runs = np.maximum(runs[:-span], runs[span:])  # runs[j] = max of values[j : j + 2**k]
        at = np.flatnonzero((level == k) & (length > 0))
        result[at] = np.maximum(runs[start[at]], runs[stop[at] - (1 << k)])
    return result


def _rings(
    hosts: np.ndarray, line_host: np.ndarray, line_s: np.ndarray, line_index: np.ndarray, window_s: float
) -> EntityStates:
    """Each host's ring after the batch: its last lines that a later line's window can hold (newer than its
    newest line's time less `window_s`, `RING_LINES` at most), left-padded with empty slots."""
    stop = np.searchsorted(line_host, np.arange(len(hosts)), side="right")
    newest = np.r_[line_s, 0.0][np.maximum(stop - 1, 0)]
    start = _first_line_after(line_host, line_s, np.arange(len(hosts)), newest - window_s)
    start = np.maximum(start, stop - RING_LINES)
    at = stop[:, None] - RING_LINES + np.arange(RING_LINES)[None, :]
    kept = at >= start[:, None]
    records = SLIDING_LAYOUT.empty(len(hosts))
    records["ring_s"][kept] = line_s[at[kept]]
    records["ring_key"][kept] = line_index[at[kept]] + 1
    return EntityStates(SLIDING_LAYOUT, hosts, records)
