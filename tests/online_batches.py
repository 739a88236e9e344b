"""A stream's features computed batch by batch, as workers compute them: what every stream's online features
are checked against (its offline features, one pass over the same events)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.entity_state import EntityStates
from shared.pipeline import Stream


def online(stream: Stream[Any, Any], columns: Any, sizes: list[int]) -> np.ndarray:
    """Features batch by batch, each entity's state kept as the bytes a store keeps."""
    states = stream.empty_states()
    rows, start = [], 0
    for size in [*sizes, len(columns)]:
        part = columns.take(np.arange(start, min(start + size, len(columns))))
        if not len(part):
            continue
        features, after = stream.advance(states, part)
        stored = EntityStates.from_blobs(stream.state_layout, after.keys.tolist(), after.blobs())
        kept = ~np.isin(states.keys, stored.keys)
        states = EntityStates.of(
            stream.state_layout,
            np.concatenate([states.keys[kept], stored.keys]),
            np.concatenate([states.records[kept], stored.records]),
        )
        rows.append(features)
        start += len(part)
    return np.vstack(rows)
