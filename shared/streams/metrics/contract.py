"""The sensor-metrics contract: what producers may put on `events.metrics` (JSON, keyed by `asset_id`).

One record per asset and timestamp, its readings by sensor name. A reading must be a finite number:
`1e999` (infinite once parsed), `NaN` (not JSON), a string or a boolean makes the record a dead letter.

>>> batch = decode_readings([
...     b'{"event_id": "e1", "asset_id": "pump-1", "timestamp": "2026-10-01T00:00:00Z", "values": {"flow": 1e999}}',
...     b'{"event_id": "e2", "asset_id": "pump-1", "timestamp": "2026-10-01T00:05:00Z", "values": {"flow": 12.5}}',
... ])
>>> [(e.kind.value, e.reason) for e in batch.errors], batch.events[0].values
([('schema', 'Number out of range - at `$.values[...]`')], {'flow': 12.5})
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.contracts import AwareTime, Identifier, JsonBatchDecoder

MAX_READING = 1e15
"""A reading beyond ±1e15 is an encoding mistake in any unit; an infinite one fails the same bound."""

MAX_VALUES_PER_RECORD = 256
"""Readings one record may carry; the stream featurizes at most `windows.MAX_SENSORS` of them."""

SensorName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Reading = Annotated[float, msgspec.Meta(ge=-MAX_READING, le=MAX_READING)]


class SensorReadings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """An asset's readings at one time, keyed on the topic by `asset_id`."""

    event_id: Identifier
    asset_id: Identifier
    timestamp: AwareTime
    values: Annotated[dict[SensorName, Reading], msgspec.Meta(min_length=1, max_length=MAX_VALUES_PER_RECORD)]


decode_readings = JsonBatchDecoder(SensorReadings)
"""Decode a batch of raw sensor-reading payloads; never raises for bad input."""
