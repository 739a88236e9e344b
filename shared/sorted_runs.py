"""Positions within runs of equal keys: the per-entity rank of an event, wanted by profiles and evaluation alike."""

from __future__ import annotations

import numpy as np


def rank_within_runs(grouped_keys: np.ndarray) -> np.ndarray:
    """Each element's position within its run of equal neighbours (keys grouped, e.g. sorted), vectorized.

    >>> rank_within_runs(np.array([3, 3, 5, 7, 7, 7])).tolist()
    [0, 1, 0, 0, 1, 2]
    >>> rank_within_runs(np.array([], dtype=np.int64)).tolist()
    []
    """
    n = len(grouped_keys)
    starts = np.flatnonzero(np.r_[True, grouped_keys[1:] != grouped_keys[:-1]])
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
