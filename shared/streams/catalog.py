"""Stream names to streams: the one line a new stream adds, plus plug-ins named in the configuration.

A plug-in is an import path `module:attribute` naming a Stream object (setting `stream_plugins`),
so a stream can live outside this repository and still be served without editing the engine.

>>> stream_named("transactions").topics.input
'events.transactions'
>>> stream_named("weather")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
shared.errors.FleetwatchError: unknown stream 'weather'; known streams: ...transactions
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from shared.errors import FleetwatchError
from shared.pipeline import Stream
from shared.streams.logs.stream import LOGS
from shared.streams.metrics.stream import METRICS
from shared.streams.transactions.stream import TRANSACTIONS

CATALOG: dict[str, Stream[Any, Any]] = {
    TRANSACTIONS.name: TRANSACTIONS,
    LOGS.name: LOGS,
    METRICS.name: METRICS,
}


def stream_named(name: str) -> Stream[Any, Any]:
    try:
        return CATALOG[name]
    except KeyError:
        raise FleetwatchError(f"unknown stream {name!r}; known streams: {', '.join(sorted(CATALOG))}") from None


def load_plugins(paths: Iterable[str]) -> None:
    """Import each `module:attribute` and add the Stream it names to the catalog (idempotent)."""
    for path in paths:
        module_name, _, attribute = path.partition(":")
        try:
            stream = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise FleetwatchError(f"stream plug-in {path!r} cannot be imported: {exc}") from exc
        if not isinstance(stream, Stream):
            raise FleetwatchError(f"stream plug-in {path!r} is a {type(stream).__name__}, not a Stream")
        CATALOG[stream.name] = stream
