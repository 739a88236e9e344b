"""The log-line event on `events.logs`: one raw line from a host, with its session when the producer knows it.

>>> batch = decode_log_lines([b'{"nope": 1}', b"\\xff"])
>>> [e.kind.value for e in batch.errors]
['schema', 'not_json']
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.contracts import AwareTime, Identifier, JsonBatchDecoder


class LogLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A raw server log line. Without `session_id`, the stream finds the session in the message (a block id,
    by the version's session rule) or windows the host's lines by time."""

    event_id: Identifier
    source_host: Identifier
    timestamp: AwareTime
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=16 * 1024)]
    session_id: Identifier | None = None
    level: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    component: Annotated[str, msgspec.Meta(max_length=256)] | None = None


decode_log_lines = JsonBatchDecoder(LogLine)
"""Decode a batch of raw log-line payloads; never raises for bad input."""
