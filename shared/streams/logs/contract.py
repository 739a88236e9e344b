"""The log-line event on `events.logs`: one raw line from a host, with its session when the producer knows it,
or the end of a session (`ends_session`) when the producer knows the session is complete.

>>> batch = decode_log_lines([b'{"nope": 1}', b"\\xff"])
>>> [e.kind.value for e in batch.errors]
['schema', 'not_json']
>>> stamp = b'"timestamp": "2026-11-30T12:00:00Z", "source_host": "dn-1", "event_id": '
>>> batch = decode_log_lines([b'{' + stamp + b'"e1", "session_id": "blk_1", "ends_session": true}',
...                           b'{' + stamp + b'"e2"}'])
>>> batch.events[0].ends_session, batch.errors[0].reason
(True, 'a log line needs a message (only an end-of-session record may have none)')
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.contracts import AwareTime, Identifier, JsonBatchDecoder


class LogLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A raw server log line. Without `session_id`, the stream finds the session in the message (a block id,
    by the version's session rule) or windows the host's lines by time.

    With `ends_session`, the record is not a line but the end of its session (named like a line's: its
    `session_id`, else a block id in its message): the session is scored complete and closed, so a session
    that stopped early is judged at its end instead of staying open until the idle timeout."""

    event_id: Identifier
    source_host: Identifier
    timestamp: AwareTime
    message: Annotated[str, msgspec.Meta(max_length=16 * 1024)] = ""
    session_id: Identifier | None = None
    level: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    component: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    ends_session: bool = False

    def __post_init__(self) -> None:
        if not self.message and not self.ends_session:
            raise ValueError("a log line needs a message (only an end-of-session record may have none)")


decode_log_lines = JsonBatchDecoder(LogLine)
"""Decode a batch of raw log-line payloads; never raises for bad input."""
