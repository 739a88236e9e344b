"""The operations console's SQL store: SQLite embedded (the default), PostgreSQL as the server option.

One schema and one SQL text for both: statements are written with `?` placeholders (SQLite's) and
rewritten to psycopg's `%s`; only the auto-numbered key column differs. Every write goes through
`transaction()`, which serialises writers (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the caller can take
`lock_chain()`, an advisory lock), so the audit chain cannot fork between two appenders. A text parameter
with a NUL character is refused on both (`UnstorableText`): PostgreSQL's text type cannot hold one.

>>> store = ConsoleStore.open("sqlite://:memory:")
>>> with store.transaction() as tx:
...     changed = tx.run("INSERT INTO entity_controls (kind, target, state, updated_at) VALUES (?, ?, ?, ?)",
...                      ("account", "u1", "locked", "2026-01-01T00:00:00Z"))
>>> store.rows("SELECT state FROM entity_controls WHERE target = ?", ("u1",))
[{'state': 'locked'}]
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.errors import FleetwatchError

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]

_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS console_users (
        username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS alerts (
        seq {serial}, id TEXT NOT NULL UNIQUE, stream TEXT NOT NULL, model_version INTEGER NOT NULL,
        severity TEXT NOT NULL, severity_score REAL NOT NULL, fired TEXT NOT NULL, entity TEXT NOT NULL,
        event_id TEXT NOT NULL, detected_at TEXT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alerts_by_entity ON alerts (entity, detected_at)",
    "CREATE TABLE IF NOT EXISTS alerts_awaiting_rules (alert_id TEXT PRIMARY KEY)",
    "CREATE INDEX IF NOT EXISTS alerts_by_score ON alerts (severity_score)",
    """CREATE TABLE IF NOT EXISTS window_reports (
        id TEXT PRIMARY KEY, stream TEXT NOT NULL, window_s INTEGER NOT NULL, window_start TEXT NOT NULL,
        scored INTEGER NOT NULL, alerts INTEGER NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS window_alerts (
        seq {serial}, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, stream TEXT NOT NULL, entity TEXT,
        window_s INTEGER NOT NULL, window_start TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS entity_controls (
        kind TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, target))""",
    """CREATE TABLE IF NOT EXISTS interventions (
        seq {serial}, id TEXT NOT NULL UNIQUE, action TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL,
        actor TEXT NOT NULL, alert_id TEXT, idempotency_key TEXT UNIQUE, before_state TEXT NOT NULL,
        after_state TEXT NOT NULL, acted_at TEXT NOT NULL, request_id TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS alert_labels (
        alert_id TEXT PRIMARY KEY, event_id TEXT NOT NULL, is_anomaly INTEGER NOT NULL, labelled_by TEXT NOT NULL,
        labelled_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY, acted_at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, reason TEXT NOT NULL, before_state TEXT NOT NULL, after_state TEXT NOT NULL,
        request_id TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0)""",
)
_CHAIN_LOCK_ID = 0x66_77_61_75  # PostgreSQL advisory lock key of the audit chain ("fwau")


class StoreUnavailable(FleetwatchError):
    """The store URL names no supported database, or the database cannot be reached."""


class UnstorableText(FleetwatchError, ValueError):
    """A text parameter holds a NUL character, which PostgreSQL's text type cannot hold: refused before the
    driver sees it, on both databases alike (a request's input to refuse, not a store failure)."""


def _refuse_nul(params: Sequence[Any]) -> tuple[Any, ...]:
    if any(isinstance(value, str) and "\x00" in value for value in params):
        raise UnstorableText("text with a NUL character (\\x00) cannot be stored or searched")
    return tuple(params)


class Transaction:
    """Statements inside one database transaction (committed when the `with` block ends without error)."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(_placeholders(sql, self.dialect), _refuse_nul(params))
        if self._cursor.description is None:
            return []
        names = [column[0] for column in self._cursor.description]
        return [dict(zip(names, row, strict=True)) for row in self._cursor.fetchall()]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; return the number of rows it changed."""
        self._cursor.execute(_placeholders(sql, self.dialect), _refuse_nul(params))
        return int(self._cursor.rowcount)

    def lock_chain(self) -> None:
        """Hold the audit chain for the rest of this transaction (PostgreSQL; SQLite's writers are serial)."""
        if self.dialect == "postgresql":
            self._cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK_ID,))


@dataclass(frozen=True, slots=True)
class Reconnection:
    """How to open a new connection when the server dropped ours, and the driver's errors that say it did."""

    connect: Callable[[], Any]
    lost: tuple[type[BaseException], ...]


class ConsoleStore:
    """One connection, shared by the console's threads under a lock: the console is one process and its
    writes are small; a PostgreSQL server is what lets several console replicas share one store.

    A PostgreSQL connection the server dropped (a restart, a failover, an idle-session timeout) fails the
    statement that found it gone with `StoreUnavailable`; the next transaction opens a new one (`reconnection`)."""

    def __init__(
        self,
        connection: Any,
        dialect: Dialect,
        reconnection: Reconnection | None = None,
    ) -> None:
        self._connection = connection
        self.dialect = dialect
        self._reconnection = reconnection
        self._lock = threading.RLock()
        with self.transaction() as tx:
            for statement in _SCHEMA:
                tx.run(statement.format(serial=_SERIAL[dialect]))

    @classmethod
    def open(cls, url: str, create: bool = True) -> ConsoleStore:
        """`sqlite:///relative/or/absolute.db`, `sqlite://:memory:`, or `postgresql://...`. Without `create`, a
        SQLite file that is not there is StoreUnavailable (a command that reads the store, pointed at the wrong
        path, would otherwise report on a new empty one)."""
        if url.startswith("sqlite://"):
            path = url.removeprefix("sqlite://").removeprefix("/")
            if path != ":memory:" and not create and not Path(path).is_file():
                raise StoreUnavailable(f"no console store at {path} (`fleetwatch console serve` creates it)")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            if path != ":memory:":
                connection.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
            return cls(connection, "sqlite")
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg

            def connect() -> Any:
                try:
                    # Bounded waits: a server that went silent is found in seconds, not at the OS's TCP timeout.
                    return psycopg.connect(
                        url, autocommit=True, connect_timeout=5, keepalives_idle=10, keepalives_interval=5,
                        keepalives_count=3,
                    )  # fmt: skip
                except psycopg.OperationalError as exc:
                    raise StoreUnavailable(f"cannot reach the console store {_redacted(url)}: {exc}") from exc

            return cls(connect(), "postgresql", Reconnection(connect, lost=(psycopg.OperationalError,)))
        raise StoreUnavailable(f"console store URL must start with sqlite:// or postgresql://, got {_redacted(url)}")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            reconnection = self._reconnection
            lost = reconnection.lost if reconnection is not None else ()
            if reconnection is not None and self._connection.broken:
                self._connection.close()
                self._connection = reconnection.connect()
            cursor = self._connection.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
                try:
                    yield Transaction(cursor, self.dialect)
                except BaseException:
                    cursor.execute("ROLLBACK")  # on a lost connection this fails too: StoreUnavailable below
                    raise
                cursor.execute("COMMIT")
            except lost as exc:
                raise StoreUnavailable(f"the console store's connection was lost: {exc}") from exc
            finally:
                cursor.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read outside any explicit transaction."""
        with self.transaction() as tx:
            return tx.rows(sql, params)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _placeholders(sql: str, dialect: Dialect) -> str:
    return sql.replace("?", "%s") if dialect == "postgresql" else sql


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
