"""Synthetic pumps: correlated sensors on a daily cycle, with injected faults and their labels kept apart.

Each pump follows one load (a daily cycle plus a slow random walk) every five minutes. Its six sensors
depend on that load as a centrifugal pump's do: speed, flow and discharge pressure rise with it, power
with its 1.5th power, vibration with the square of speed, and the bearing temperature follows power and
the day's ambient temperature with a lag. Faults are segments of one pump's readings:

- `spike`: one reading of one sensor 6-12 of its standard deviations off;
- `drift`: one sensor drifts away over 24 readings, up to 8 standard deviations (labelled from 2 on);
- `stuck`: one sensor repeats its last value for 16 readings;
- `broken_correlation`: flow falls to half while pressure rises by a fifth for 16 readings (a blockage:
  each value stays in its range, their relation breaks).

`anomaly_rate` is the expected share of labelled readings. Same seed, same data.

>>> data = generate_pumps(events=200, assets=4, anomaly_rate=0.05, seed=1)
>>> len(data.payloads), sorted(set(data.keys)), int(data.is_anomaly.sum()) > 0
(200, ['pump-000', 'pump-001', 'pump-002', 'pump-003'], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np

SENSORS = ("flow_m3h", "discharge_bar", "power_kw", "speed_rpm", "bearing_temp_c", "vibration_mm_s")
STEP_S = 300.0
DAY_S = 86_400.0
START = datetime(2026, 10, 1, tzinfo=UTC).timestamp()

FAULT_LENGTHS = {"spike": 1, "drift": 24, "stuck": 16, "broken_correlation": 16}
_LABELLED_PER_FAULT = float(np.mean([1, 18, 16, 16]))  # a drift is labelled over its last 3/4


@dataclass(frozen=True)
class SyntheticPumps:
    payloads: list[bytes]
    keys: list[str]
    event_id: np.ndarray
    is_anomaly: np.ndarray
    anomaly_kind: np.ndarray


def _clean_readings(rng: np.random.Generator, steps: int, times: np.ndarray) -> np.ndarray:
    """(steps, 6) readings of one healthy pump."""
    phase = rng.uniform(0, 1)
    walk = np.cumsum(rng.normal(0, 0.004, steps))
    load = np.clip(0.7 + 0.2 * np.sin(2 * np.pi * (times / DAY_S + phase)) + walk - walk.mean(), 0.3, 1.0)
    nominal_flow, nominal_bar, nominal_kw = rng.uniform(80, 120), rng.uniform(4, 6), rng.uniform(30, 45)
    speed = 1480 * (0.55 + 0.45 * load) + rng.normal(0, 4, steps)
    flow = nominal_flow * load + rng.normal(0, 1.2, steps)
    discharge = nominal_bar * (0.4 + 0.6 * load**2) + rng.normal(0, 0.05, steps)
    power = nominal_kw * (0.25 + 0.75 * load**1.5) + rng.normal(0, 0.4, steps)
    ambient = 18 + 6 * np.sin(2 * np.pi * (times / DAY_S - 0.3))
    lagged_power = np.convolve(np.r_[np.full(11, power[0]), power], np.full(12, 1 / 12), mode="valid")
    temperature = ambient + 0.9 * lagged_power + rng.normal(0, 0.3, steps)
    vibration = 1.2 + 2.0 * (speed / 1480) ** 2 + rng.normal(0, 0.08, steps)
    return np.column_stack([flow, discharge, power, speed, temperature, vibration])


def _inject(rng: np.random.Generator, readings: np.ndarray, kind: str, start: int) -> np.ndarray:
    """Apply one fault from `start` (in place); returns the rows it labels."""
    steps = len(readings)
    stop = min(start + FAULT_LENGTHS[kind], steps)
    rows = np.arange(start, stop)
    sensor = int(rng.integers(len(SENSORS)))
    spread = max(float(readings[:, sensor].std()), 1e-3)
    if kind == "spike":
        readings[start, sensor] += rng.choice([-1.0, 1.0]) * rng.uniform(6, 12) * spread
    elif kind == "drift":
        offset = np.linspace(0, 8, FAULT_LENGTHS[kind])[: len(rows)] * spread * rng.choice([-1.0, 1.0])
        readings[rows, sensor] += offset
        rows = rows[np.abs(offset) >= 2 * spread]
    elif kind == "stuck":
        readings[rows, sensor] = readings[max(start - 1, 0), sensor]
    else:
        readings[rows, 0] *= 0.5
        readings[rows, 1] *= 1.2
    return rows


def generate_pumps(events: int, assets: int, anomaly_rate: float, seed: int) -> SyntheticPumps:
    """`events` readings of `assets` pumps (split evenly, in time order across pumps), faults labelled apart."""
    rng = np.random.default_rng(seed)
    assets = max(1, min(assets, events))
    per_asset = np.full(assets, events // assets) + (np.arange(assets) < events % assets)
    kinds = list(FAULT_LENGTHS)
    parts = []
    for asset, steps in enumerate(per_asset.tolist()):
        times = START + asset * STEP_S / assets + STEP_S * np.arange(steps)
        readings = _clean_readings(rng, steps, times)
        labels = np.full(steps, "", dtype=object)
        faults = int(rng.binomial(steps, min(anomaly_rate / _LABELLED_PER_FAULT, 1.0))) if steps else 0
        for _ in range(faults):
            fault = kinds[int(rng.integers(len(kinds)))]
            labels[_inject(rng, readings, fault, int(rng.integers(steps)))] = fault
        parts.append((np.full(steps, asset), times, readings, labels))
    asset_of, times, readings, kind = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.argsort(times, kind="stable")
    asset_of, times, readings, kind = asset_of[order], times[order], readings[order], kind[order]
    event_id = np.array([f"pump-{seed}-{i}" for i in range(len(times))], dtype=object)
    keys = [f"pump-{a:03d}" for a in asset_of.tolist()]
    stamps = [datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") for t in times.tolist()]
    encoder = msgspec.json.Encoder()
    payloads = [
        encoder.encode(
            {
                "event_id": e,
                "asset_id": k,
                "timestamp": s,
                "values": dict(zip(SENSORS, np.round(row, 4).tolist(), strict=True)),
            }
        )
        for e, k, s, row in zip(event_id.tolist(), keys, stamps, readings, strict=True)
    ]
    return SyntheticPumps(payloads, keys, event_id, kind != "", kind.astype(str))
