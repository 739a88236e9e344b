"""What the console reads: the workers' alert records and the summarizer's window reports and window alerts
(rate alerts and entity escalations), kept in the store.

An alert is identified by the input record it was raised for (`stream:topic:partition:offset` of its
source), so a batch the workers wrote twice (at-least-once delivery, a replayed topic) is stored once.
The entity of an alert is the key the worker kept its state under, which the record carries (a user, an
asset, a log line's session); a record from before 2026-12-02 gives the field its stream windows by.

>>> alert_id("transactions", Source(topic="t", partition=0, offset=7))
'transactions:t:0:7'

Every record is checked against what the console reads of it (`_Alert`, `_WindowReport`, `_WindowAlert`)
before it is stored: one malformed record is refused (`msgspec.ValidationError`, a ValueError) and skipped
by the caller, never stored half or left to fail the batch's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from shared.console_store import ConsoleStore, Row, Transaction
from shared.output_records import DetectorVerdict, Source, StandoutFeature
from shared.streams.catalog import CATALOG

AlertFilter = dict[str, str | None]


def alert_id(stream: str, source: Source) -> str:
    return f"{stream}:{source.topic}:{source.partition}:{source.offset}"


def _entity_field(stream: str) -> str:
    return CATALOG[stream].windows.entity if stream in CATALOG else "entity"


class _Alert(msgspec.Struct):
    """What the console reads of a worker's alert record (`shared.output_records.AlertRecord`, whose parts it
    reuses): the page shows the detectors and standout features, the rules read the event as an object and
    compare times. Other fields are kept as sent."""

    stream: str
    model_version: int
    severity: Literal["low", "medium", "high"]
    severity_score: float
    fired: list[str]
    detectors: list[DetectorVerdict]
    standout_features: list[StandoutFeature]
    source: Source
    detected_at: Annotated[datetime, msgspec.Meta(tz=True)]
    event: dict[str, Any]
    entity: str | None = None  # the worker's key (a log line's session); None in records before 2026-12-02


def store_alert(tx: Transaction, record: dict[str, Any]) -> str | None:
    """Insert one worker alert record; its id when it is new, None when it was stored before. A record without
    the fields the console reads, or with values of other types, is refused (`msgspec.ValidationError`)."""
    alert = msgspec.convert(record, _Alert)
    identifier = alert_id(alert.stream, alert.source)
    inserted = tx.run(
        "INSERT INTO alerts (id, stream, model_version, severity, severity_score, fired, entity, event_id, "
        "detected_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            identifier,
            alert.stream,
            alert.model_version,
            alert.severity,
            alert.severity_score,
            msgspec.json.encode(alert.fired).decode(),
            alert.entity if alert.entity is not None else str(alert.event.get(_entity_field(alert.stream), "")),
            str(alert.event.get("event_id", "")),
            record["detected_at"],  # as sent: the text the rules compare, checked to be a time with its zone
            msgspec.json.encode(record).decode(),
        ),
    )
    return identifier if inserted else None


class _AlertCount(msgspec.Struct):
    count: int


class _WindowReport(msgspec.Struct):
    """What the console needs of a summarizer's `window_summary` record; other fields are kept as sent."""

    stream: str
    window_s: int
    window_start: str
    scored: int
    dimensions: dict[str, Any]
    alerts: _AlertCount


def store_window_report(tx: Transaction, record: dict[str, Any]) -> bool:
    """Insert one `window_summary` record; (stream, window, dimensions) identifies it, so a repeat is dropped.
    A record without those fields, or with values of other types, is refused (`msgspec.ValidationError`)."""
    report = msgspec.convert(record, _WindowReport)
    dimensions = msgspec.json.encode(dict(sorted(report.dimensions.items()))).decode()
    identifier = f"{report.stream}:{report.window_s}:{report.window_start}:{dimensions}"
    return bool(
        tx.run(
            "INSERT INTO window_reports (id, stream, window_s, window_start, scored, alerts, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                identifier,
                report.stream,
                report.window_s,
                report.window_start,
                report.scored,
                report.alerts.count,
                msgspec.json.encode(record).decode(),
            ),
        )
    )


class _WindowAlert(msgspec.Struct, tag_field="type"):
    """What the console needs of a summarizer's window alert (`shared.windows`); other fields are kept as sent."""

    stream: str
    window_s: int
    window_start: str
    alerts: int
    raised_at: str


class _RateAlert(_WindowAlert, tag="rate_alert"):
    scored: int
    rate: float
    baseline: float | None
    criteria: list[str]


class _EntityEscalation(_WindowAlert, tag="entity_escalation"):
    entity: str
    limit: int


WINDOW_ALERT_KINDS = ("rate_alert", "entity_escalation")
"""The summarizer's records on the alerts topic about a window rather than an event."""


def store_window_alert(tx: Transaction, record: dict[str, Any]) -> bool:
    """Insert one rate alert or entity escalation; (kind, stream, window, entity) identifies it, so a repeat (a
    summarizer restarted before its offsets were committed) is dropped. A record without the fields the page
    shows, or with values of other types, is refused (`msgspec.ValidationError`, a ValueError)."""
    alert = msgspec.convert(record, _RateAlert | _EntityEscalation)
    kind = record["type"]
    entity = alert.entity if isinstance(alert, _EntityEscalation) else None
    identifier = f"{kind}:{alert.stream}:{alert.window_s}:{alert.window_start}:{entity or ''}"
    return bool(
        tx.run(
            "INSERT INTO window_alerts (id, kind, stream, entity, window_s, window_start, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                identifier,
                kind,
                alert.stream,
                entity,
                alert.window_s,
                alert.window_start,
                msgspec.json.encode(record).decode(),
            ),
        )
    )


def window_alerts(store: ConsoleStore, stream: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest rate alerts and entity escalations first, each the summarizer's record with its `seq`."""
    where, params = ("WHERE stream = ?", (stream,)) if stream is not None else ("", ())
    rows = store.rows(f"SELECT seq, body FROM window_alerts {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
    return [{**msgspec.json.decode(row["body"]), "seq": int(row["seq"])} for row in rows]


_SUMMARY_COLUMNS = "seq, id, stream, model_version, severity, severity_score, fired, entity, event_id, detected_at"


def _summary(row: Row) -> dict[str, Any]:
    return {**row, "fired": msgspec.json.decode(row["fired"])}


def recent_alerts(
    store: ConsoleStore,
    *,
    stream: str | None = None,
    detector: str | None = None,
    severity: str | None = None,
    entity: str | None = None,
    after_seq: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first; with `after_seq`, the alerts stored after that one, oldest first: a page that polls reads
    them in order, `limit` at a time, and never skips one however many came in since its last poll."""
    clauses: list[str] = ["seq > ?"]
    params: list[Any] = [after_seq or 0]
    for column, value in (("stream", stream), ("severity", severity), ("entity", entity)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if detector is not None:
        # `fired` is a JSON list of names; names are [a-z0-9_], so a quoted match is exact.
        clauses.append("fired LIKE ?")
        params.append(f'%"{detector}"%')
    order = "DESC" if after_seq is None else "ASC"
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM alerts WHERE {' AND '.join(clauses)} ORDER BY seq {order} LIMIT ?"
    return [_summary(row) for row in store.rows(sql, (*params, limit))]


def top_alerts(store: ConsoleStore, n: int, stream: str | None = None) -> list[dict[str, Any]]:
    """The n alerts with the highest severity score (seed 001's sorted insights), newest first among equals."""
    where, params = ("WHERE stream = ?", (stream,)) if stream else ("", ())
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM alerts {where} ORDER BY severity_score DESC, seq DESC LIMIT ?"
    return [_summary(row) for row in store.rows(sql, (*params, n))]


def alert_report(store: ConsoleStore, identifier: str) -> dict[str, Any] | None:
    """The full alert record: detectors with score, threshold and verdict, standout features, the event."""
    rows = store.rows(f"SELECT {_SUMMARY_COLUMNS}, body FROM alerts WHERE id = ?", (identifier,))
    if not rows:
        return None
    row = rows[0]
    return {**_summary({k: v for k, v in row.items() if k != "body"}), "report": msgspec.json.decode(row["body"])}


def await_rules(tx: Transaction, identifier: str) -> None:
    """Mark a new alert for the automation rules, in the transaction that stores it: an alert stored is never
    left out by rules that failed (the store lost, the console stopped) before they ran."""
    tx.run("INSERT INTO alerts_awaiting_rules (alert_id) VALUES (?)", (identifier,))


def alerts_awaiting_rules(store: ConsoleStore) -> list[str]:
    """The ids of alerts the rules have not run on, oldest first."""
    rows = store.rows("SELECT a.id FROM alerts_awaiting_rules w JOIN alerts a ON a.id = w.alert_id ORDER BY a.seq")
    return [row["id"] for row in rows]


def rules_ran(store: ConsoleStore, identifier: str) -> None:
    with store.transaction() as tx:
        tx.run("DELETE FROM alerts_awaiting_rules WHERE alert_id = ?", (identifier,))


def entity_alert_count(tx: Transaction, entity: str, since_iso: str) -> int:
    rows = tx.rows("SELECT COUNT(*) AS n FROM alerts WHERE entity = ? AND detected_at >= ?", (entity, since_iso))
    return int(rows[0]["n"])


def window_reports(
    store: ConsoleStore, stream: str | None = None, window_s: int | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Anomaly rate per window, summed over the dimension keys of each (stream, window size, start)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("stream", stream), ("window_s", window_s)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        "SELECT stream, window_s, window_start, SUM(scored) AS scored, SUM(alerts) AS alerts FROM window_reports "
        f"{where} GROUP BY stream, window_s, window_start ORDER BY window_start DESC LIMIT ?"
    )
    rows = store.rows(sql, (*params, limit))
    return [
        {**row, "scored": int(row["scored"]), "alerts": int(row["alerts"]), "anomaly_rate": _rate(row)}
        for row in reversed(rows)
    ]


def _rate(row: Row) -> float:
    return int(row["alerts"]) / int(row["scored"]) if int(row["scored"]) else 0.0


def decode_records(payloads: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """JSON objects, or None for a payload that is not one (skipped and counted by the caller)."""
    decoded: list[dict[str, Any] | None] = []
    for payload in payloads:
        try:
            value = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            value = None
        decoded.append(value if isinstance(value, dict) else None)
    return decoded
