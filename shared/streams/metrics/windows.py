"""Sliding windows of an asset's readings: the features of the sensor-metrics stream and the state it keeps.

Every reading is scored with the window that ends at it: the asset's `size` latest readings, its own
included, of up to `MAX_SENSORS` sensors (the slots, in the order the stream learned the sensor names).
The features are the window's older rows (`lag{size-1}` .. `lag1`, oldest first: the vector form nearest
neighbours compare), each sensor's distance from its running level (`level`, see `levels`: the asset's own
recent readings, over a memory far longer than the window), each sensor's log spread over the window
(`logspread`: the log of its standard deviation, floored at a millionth of its level, so a stuck sensor
stands out by many standard deviations instead of one), and the current row (`now`); row-wise detectors
read only the `ROW_FEATURES` (spreads and row), the level specialist only the `level` ones.

The window's shape is chosen per stream by configuration (`WindowShape`: `size` readings, 8 by default, and a
`step`) and learned into a version, so a version featurizes with the size it was trained with. The step is a
training-time choice: the detectors fit on every `step`-th window of each asset (the one ending at its
`step`-th reading, then every `step` readings: with step = size, windows that do not overlap), while the
calibration and evaluation rows and the workers score every reading, one output per reading. At most 16
sensors, since the feature columns are fixed slots. A reading without a value for a sensor carries that
sensor's previous value forward (the training median for an asset's first reading). An asset's state between
batches is its last `size - 1` rows, how many of them are real readings, its sensors' running levels, and the
sensor set they belong to, so a version that learned other sensors starts a fresh window and level instead of
misreading them; a state of another size is another record size, which the state store ignores.

A new asset's window holds fewer than `size` real readings. Its older rows are padded with its first
reading, and its spread is estimated from the real rows only, the missing ones counted at the typical
variance a version learned from its training history (`typical_variance`: the median over full windows):
with r real readings of sum of squared deviations S, the variance is (S + (W - r) · v · W / (W - 1)) / W for
a typical window variance v and window size W. A single reading thus has the typical spread, and a full
window its own; the padding never reads as a stuck sensor.

>>> sensors = ("flow", "power")
>>> columns = MetricColumns.from_values(["a", "a", "a"], [0.0, 300.0, 600.0], [{"flow": 1.0, "power": 2.0},
...                                     {"flow": 3.0}, {"flow": 5.0, "power": 4.0}])
>>> typical = np.r_[4.0, 0.25, np.zeros(MAX_SENSORS - 2)]
>>> features, after = advance_windows(EntityStates.empty(window_layout(8)), columns, sensors, np.zeros(MAX_SENSORS),
...                                   typical, typical, WindowShape())
>>> names = feature_spec(8).names
>>> [name for name in names if name.endswith(":s00")][-4:]
['lag1:s00', 'level:s00', 'logspread:s00', 'now:s00']
>>> features[:, names.index("now:s01")].tolist(), float(features[2, names.index("lag1:s00")])
([2.0, 2.0, 4.0], 3.0)
>>> np.exp(features[0, names.index("logspread:s00")]).round(3), after.records["real"].tolist()
(np.float64(2.0), [3])
>>> features[:, names.index("level:s00")].round(3).tolist()
[0.0, 1.061, 1.627]
>>> feature_spec(3).names[:: MAX_SENSORS], training_windows(columns, step=2).tolist()
(('lag2:s00', 'lag1:s00', 'level:s00', 'logspread:s00', 'now:s00'), [False, True, False])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from shared.entity_state import EntityStates, StateLayout
from shared.pipeline import ArrayColumns, FeatureSpec
from shared.streams.metrics.levels import SPREAD_FLOOR, LevelState, advance_levels

MAX_SENSORS = 16
"""Sensor slots of the feature spec; a training history naming more sensors is refused."""

WINDOW_SIZES = range(2, 65)
"""The window sizes a stream may be configured with: readings per window, the scored one included."""

ROW_FEATURES = ("logspread:*", "now:*")
"""The features row-wise detectors read (a detector entry's `features`): each sensor's log spread over the window,
then the row."""


LEVEL_MEMORIES = range(2, 1_000_001)
"""The level memories a stream may be configured with, in readings (see `levels`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowShape:
    """How the stream slides its windows: `size` readings each, a training window every `step` readings, and
    the memory of each sensor's running level (`level_memory` readings, see `levels`)."""

    size: int = 8
    step: int = 1
    level_memory: int = 1000

    def __post_init__(self) -> None:
        if type(self.size) is not int or self.size not in WINDOW_SIZES:
            raise ValueError(
                f"the metrics window size must be an integer from {WINDOW_SIZES.start} to {WINDOW_SIZES.stop - 1} "
                f"readings; got {self.size!r}"
            )
        if type(self.step) is not int or self.step < 1:
            raise ValueError(f"the metrics window step must be a positive integer (readings); got {self.step!r}")
        if type(self.level_memory) is not int or self.level_memory not in LEVEL_MEMORIES:
            raise ValueError(
                f"the metrics level memory must be an integer from {LEVEL_MEMORIES.start} to "
                f"{LEVEL_MEMORIES.stop - 1} readings; got {self.level_memory!r}"
            )


@cache
def feature_spec(size: int) -> FeatureSpec:
    """The features of windows of `size` readings: `lag{size-1}` .. `lag1`, `level`, `logspread`, `now`, each
    per slot."""
    return FeatureSpec(
        3,  # 3: the running level; 2: spreads over the real readings only (1 spread a new asset's padding too)
        tuple(
            f"{part}:s{slot:02d}"
            for part in (*(f"lag{lag}" for lag in range(size - 1, 0, -1)), "level", "logspread", "now")
            for slot in range(MAX_SENSORS)
        ),
    )


SIZE_INDEPENDENT_PARTS = 3
"""Parts of the spec that are not window rows (level, logspread, now): names = (size - 1 + 3) · MAX_SENSORS."""


@cache
def window_layout(size: int) -> StateLayout:
    """An asset's state: the key of the sensor set its rows follow (0: none yet), how many of its last size - 1
    rows are real readings (the others, the oldest, pad a new asset's window with its first reading), the rows,
    and each sensor's running level (`levels.LevelState`)."""
    return StateLayout(
        np.dtype(
            [
                ("sensor_set", "<u8"),
                ("real", "<i8"),
                ("rows", "<f8", (size - 1, MAX_SENSORS)),
                ("level_weight", "<f8"),
                ("level_mean", "<f8", (MAX_SENSORS,)),
                ("level_variance", "<f8", (MAX_SENSORS,)),
            ]
        )
    )


def sensor_set_key(sensors: Sequence[str]) -> int:
    """A non-zero 64-bit key of an ordered sensor set: states written under another set are not read as this one."""
    digest = hashlib.blake2b("\x1f".join(sensors).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 1


@dataclass(frozen=True)
class MetricColumns(ArrayColumns):
    """A batch of readings as arrays; `values` holds each record's readings as it arrived (name -> number)."""

    event_id: np.ndarray
    asset_id: np.ndarray
    timestamp_s: np.ndarray
    values: np.ndarray  # object array of dict[str, float]

    @classmethod
    def from_values(
        cls, assets: Sequence[str], timestamps_s: Sequence[float], values: Sequence[dict[str, float]]
    ) -> MetricColumns:
        return cls(
            event_id=np.array([f"{a}@{t}" for a, t in zip(assets, timestamps_s, strict=True)], dtype=object),
            asset_id=np.array(assets, dtype=object),
            timestamp_s=np.asarray(timestamps_s, dtype=np.float64),
            values=object_array(values),
        )

    @property
    def entity(self) -> np.ndarray:
        return self.asset_id

    @property
    def event_time_s(self) -> np.ndarray:
        return self.timestamp_s

    def readings(self, sensors: Sequence[str]) -> np.ndarray:
        """(n, MAX_SENSORS) readings in slot order; NaN where a record lacks a sensor, 0 in unused slots."""
        matrix = np.zeros((len(self), MAX_SENSORS))
        if len(self) and sensors:
            # Records are dicts of varying keys: one lookup per record and sensor is the only way in.
            matrix[:, : len(sensors)] = [[record.get(name, np.nan) for name in sensors] for record in self.values]
        return matrix


def object_array(items: Sequence[object]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


@dataclass(frozen=True)
class AssetOrder:
    """A batch's readings grouped by asset, each asset's in time order, whatever order the batch has."""

    assets: np.ndarray  # the distinct assets, sorted
    order: np.ndarray  # the batch's rows, asset by asset, each asset's in time order
    group: np.ndarray  # the asset (index into `assets`) of each row of `order`
    starts: np.ndarray  # where each asset's rows begin in `order`
    counts: np.ndarray  # how many rows each asset has

    @classmethod
    def of(cls, columns: MetricColumns) -> AssetOrder:
        assets, group = np.unique(columns.asset_id, return_inverse=True)
        group = group.reshape(-1)
        order = np.lexsort((columns.timestamp_s, group))
        counts = np.bincount(group, minlength=len(assets))
        return cls(assets, order, group[order], np.cumsum(counts) - counts, counts)

    @property
    def within(self) -> np.ndarray:
        """The position of each row of `order` among its asset's readings (0: the asset's first in the batch)."""
        return np.arange(len(self.order)) - self.starts[self.group]


@dataclass(frozen=True)
class Windows:
    """Every reading's window, oldest row first, and how many of its rows are real readings (the newest ones)."""

    rows: np.ndarray  # (n, size, MAX_SENSORS), in the batch's order
    real: np.ndarray  # (n,) 1 .. size
    after: EntityStates
    by_asset: AssetOrder
    levels: LevelState  # each asset's stored level (fresh where the state follows another sensor set)

    @property
    def size(self) -> int:
        return int(self.rows.shape[1])


def slide_windows(
    before: EntityStates, columns: MetricColumns, sensors: Sequence[str], fill: np.ndarray, size: int
) -> Windows:
    """Every reading's window of `size` readings and real-reading count, and each asset's state after the batch;
    vectorized.

    `fill` holds each slot's value for an asset's first reading that lacks it (the training medians).
    Within an asset, readings are taken in time order, whatever order the batch has.
    """
    n, history, layout = len(columns), size - 1, window_layout(size)
    key = np.uint64(sensor_set_key(sensors))
    by_asset = AssetOrder.of(columns)
    assets, order, g, starts, counts = by_asset.assets, by_asset.order, by_asset.group, by_asset.starts, by_asset.counts
    x = columns.readings(sensors)[order]
    # Each asset's stored rows, then its readings: one sequence per asset, laid end to end.
    stored = before.aligned(assets)
    known = stored["sensor_set"] == key
    stored_real = np.where(known, np.clip(stored["real"], 0, history), 0)
    first = x[starts] if n else np.empty((0, MAX_SENSORS))
    first = np.where(np.isnan(first), fill[None, :], first)
    prefix = np.where(known[:, None, None], stored["rows"], first[:, None, :])
    segment_start = np.arange(len(assets)) * history + starts
    within = by_asset.within
    position = segment_start[g] + history + within
    sequence = np.empty((len(assets) * history + n, MAX_SENSORS))
    sequence[(segment_start[:, None] + np.arange(history)).reshape(-1)] = prefix.reshape(-1, MAX_SENSORS)
    sequence[position] = x
    # Carry the last value forward where a reading is missing; every asset's segment starts with full rows.
    last_seen = np.where(np.isnan(sequence), 0, np.arange(len(sequence))[:, None])
    sequence = sequence[np.maximum.accumulate(last_seen, axis=0), np.arange(MAX_SENSORS)[None, :]]

    rows = np.empty((n, size, MAX_SENSORS))
    rows[order] = sequence[position[:, None] + np.arange(-history, 1)[None, :]]
    real = np.empty(n, dtype=np.int64)
    real[order] = np.minimum(stored_real[g] + within + 1, size)

    ends = segment_start + history + counts
    after = layout.empty(len(assets))
    after["sensor_set"] = key
    after["real"] = np.minimum(stored_real + counts, history)
    after["rows"] = sequence[ends[:, None] + np.arange(-history, 0)[None, :]]
    levels = LevelState(
        np.where(known, stored["level_weight"], 0.0),
        np.where(known[:, None], stored["level_mean"], 0.0),
        np.where(known[:, None], stored["level_variance"], 0.0),
    )
    return Windows(rows, real, EntityStates(layout, assets, after), by_asset, levels)


def training_windows(history: MetricColumns, step: int) -> np.ndarray:
    """Which readings' windows the detectors fit on (bool, in the history's order): each asset's `step`-th
    reading, then every `step` readings; all of them at step 1."""
    by_asset = AssetOrder.of(history)
    chosen = np.empty(len(history), dtype=bool)
    chosen[by_asset.order] = by_asset.within % step == step - 1
    return chosen


def log_spread(windows: Windows, typical_variance: np.ndarray) -> np.ndarray:
    """(n, MAX_SENSORS) each sensor's log spread over the real rows of its window, floored at a share of their level;
    the missing rows of a young window count at `typical_variance` (a single reading has the typical spread)."""
    size = windows.size
    real_row = (np.arange(size)[None, :] >= size - windows.real[:, None])[:, :, None]  # the newest `real` rows
    r = windows.real[:, None].astype(np.float64)
    level = np.where(real_row, windows.rows, 0.0).sum(axis=1) / r
    squares = np.where(real_row, (windows.rows - level[:, None, :]) ** 2, 0.0).sum(axis=1)
    variance = (squares + (size - r) * typical_variance[None, :] * (size / (size - 1))) / size
    return np.log(np.sqrt(variance) + SPREAD_FLOOR * (1.0 + np.abs(level)))


def learn_typical_variance(windows: Windows) -> np.ndarray:
    """Each sensor's median variance over the full windows of a history (zeros without any)."""
    full = windows.real == windows.size
    if not full.any():
        return np.zeros(MAX_SENSORS)
    return np.median(windows.rows[full].var(axis=1), axis=0)


def advance_windows(
    before: EntityStates,
    columns: MetricColumns,
    sensors: Sequence[str],
    fill: np.ndarray,
    typical_variance: np.ndarray,
    level_variance: np.ndarray,
    shape: WindowShape,
) -> tuple[np.ndarray, EntityStates]:
    """Every reading's features, and each asset's state after the batch; vectorized over the batch.

    `fill` holds each slot's value for an asset's first reading that lacks it (the training medians),
    `typical_variance` each slot's variance over a typical window (what a young window's missing rows count as),
    `level_variance` each slot's typical variance of an asset's readings (a young level's prior).
    """
    windows = slide_windows(before, columns, sensors, fill, shape.size)
    rows, n, size = windows.rows, len(columns), shape.size
    now = rows[:, -1, :]
    level, levels = advance_levels(windows.levels, now, windows.by_asset, level_variance, shape.level_memory)
    after = windows.after.records
    after["level_weight"], after["level_mean"], after["level_variance"] = levels.weight, levels.mean, levels.variance
    parts = [rows[:, : size - 1, :].reshape(n, -1), level, log_spread(windows, typical_variance), now]
    return np.hstack(parts), windows.after
