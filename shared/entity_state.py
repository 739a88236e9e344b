"""Entities' state as one structured numpy array, so that a batch's state is read, advanced and written as
columns instead of one Python object per entity.

A stream declares its state as a fixed-size record (`StateLayout`: a numpy dtype and the values of an
empty record). Fixed size is what makes the store fast: a batch's records come back from Redis as one
byte string per entity and become one array with a single `np.frombuffer`.

>>> layout = StateLayout(np.dtype([("count", "<f8"), ("last_ts", "<f8")]), fill={"last_ts": np.nan})
>>> states = EntityStates.from_blobs(layout, ["b", "a"], [None, layout.empty(1).tobytes()])
>>> states.keys.tolist(), states.aligned(np.array(["a", "c"], dtype=object))["last_ts"].tolist()
(['a'], [nan, nan])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StateLayout:
    """One entity's state record: its dtype, and the fields whose empty value is not zero."""

    dtype: np.dtype
    fill: Mapping[str, float] = field(default_factory=dict)

    def empty(self, n: int) -> np.ndarray:
        records = np.zeros(n, dtype=self.dtype)
        for name, value in self.fill.items():
            records[name] = value
        return records

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)


@dataclass(frozen=True)
class EntityStates:
    """States of a set of entities: `keys` sorted (the order `np.unique` gives), `records` aligned with them."""

    layout: StateLayout
    keys: np.ndarray
    records: np.ndarray

    @classmethod
    def empty(cls, layout: StateLayout) -> EntityStates:
        return cls(layout, np.array([], dtype=object), layout.empty(0))

    @classmethod
    def from_blobs(cls, layout: StateLayout, keys: Sequence[str], blobs: Sequence[bytes | None]) -> EntityStates:
        """States from one stored record per entity; entities without one (None) are left out."""
        present = [index for index, blob in enumerate(blobs) if blob is not None]
        records = np.frombuffer(b"".join(blobs[index] or b"" for index in present), dtype=layout.dtype)
        return cls.of(layout, np.array([keys[index] for index in present], dtype=object), records)

    @classmethod
    def of(cls, layout: StateLayout, keys: np.ndarray, records: np.ndarray) -> EntityStates:
        """Sorts the keys (and their records) into the order lookups expect."""
        order = np.argsort(keys, kind="stable")
        return cls(layout, keys[order], records[order])

    def selected(self, mask: np.ndarray) -> EntityStates:
        """The states whose entry in the boolean `mask` (aligned with `keys`) is set; still sorted."""
        return EntityStates(self.layout, self.keys[mask], self.records[mask])

    def aligned(self, keys: np.ndarray) -> np.ndarray:
        """Records for `keys` (sorted, distinct), an empty record for each entity not held here."""
        records = self.layout.empty(len(keys))
        if len(self.keys) == 0 or len(keys) == 0:
            return records
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        held = self.keys[at] == keys
        records[held] = self.records[at[held]]
        return records

    def blobs(self) -> list[bytes]:
        """One byte string per entity, in `keys` order: what a key-value store keeps."""
        whole, size = self.records.tobytes(), self.layout.itemsize
        return [whole[start : start + size] for start in range(0, len(whole), size)]

    def __len__(self) -> int:
        return len(self.keys)
