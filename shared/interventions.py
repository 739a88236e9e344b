"""Acting on what the fleet found: the actions, the one path that applies them, and their store.

A person (through the console) and an automation rule call the same `InterventionDesk.apply`. In one
store transaction it reads the target's state before, changes it, keeps the intervention and appends
exactly one audit record; the intervention and the audit record are then exported to Kafka from the
store (`unpublished` / `mark_published`), so a broker outage delays the export and loses nothing.
An `idempotency_key` (automation: rule and alert) makes a repeated request return the first outcome
without acting again.

Model actions (promote, rollback, threshold methods) change the registry first: a refused version
raises and nothing is recorded; then the record and its audit entry are written like any other. Should
that transaction fail, the deployed pointer is moved back (`ModelChange.undo`) and the error says whether
it was: no deploy stands without its audit record, and none is audited twice.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from shared import audit_log
from shared.console_store import ConsoleStore, Row, Transaction
from shared.errors import FleetwatchError
from shared.logs import get_logger
from shared.metrics import CONSOLE_ACTIONS
from shared.output_records import now_iso

log = get_logger("fleetwatch.console")

SYSTEM_ACTOR = "system:automation"
"""Who the audit log names for what automation rules do."""


class Action(enum.StrEnum):
    LOCK_ACCOUNT = "lock_account"
    UNLOCK_ACCOUNT = "unlock_account"
    BLOCK_TRANSACTION = "block_transaction"
    RELEASE_TRANSACTION = "release_transaction"
    REQUIRE_STEP_UP = "require_step_up"  # extra authentication for the account's next operations
    LABEL_TRUE_POSITIVE = "label_true_positive"
    LABEL_FALSE_POSITIVE = "label_false_positive"
    PROMOTE_VERSION = "promote_version"
    ROLLBACK_VERSION = "rollback_version"
    SET_THRESHOLDS = "set_thresholds"


ENTITY_ACTIONS = frozenset(
    {
        Action.LOCK_ACCOUNT,
        Action.UNLOCK_ACCOUNT,
        Action.BLOCK_TRANSACTION,
        Action.RELEASE_TRANSACTION,
        Action.REQUIRE_STEP_UP,
    }
)
LABEL_ACTIONS = frozenset({Action.LABEL_TRUE_POSITIVE, Action.LABEL_FALSE_POSITIVE})
MODEL_ACTIONS = frozenset({Action.PROMOTE_VERSION, Action.ROLLBACK_VERSION, Action.SET_THRESHOLDS})

# action -> (the control it sets, the state it sets it to); `_UNSET` is a control never set.
_EFFECTS: dict[Action, tuple[str, str]] = {
    Action.LOCK_ACCOUNT: ("account", "locked"),
    Action.UNLOCK_ACCOUNT: ("account", "unlocked"),
    Action.BLOCK_TRANSACTION: ("transaction", "blocked"),
    Action.RELEASE_TRANSACTION: ("transaction", "released"),
    Action.REQUIRE_STEP_UP: ("authentication", "step_up_required"),
}
_UNSET = {"account": "unlocked", "transaction": "released", "authentication": "standard"}


class InterventionRequest(msgspec.Struct, kw_only=True, frozen=True):
    action: Action
    target: str  # a user id, an event id, an alert id or a stream, by action
    reason: str
    actor: str
    request_id: str
    alert_id: str | None = None
    idempotency_key: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)  # model actions: version, methods


class InterventionRecord(msgspec.Struct, kw_only=True, frozen=True):
    """What the `interventions` topic carries and the store keeps."""

    id: str
    action: str
    target: str
    reason: str
    actor: str
    alert_id: str | None
    before: dict[str, Any]
    after: dict[str, Any]
    acted_at: str
    request_id: str
    idempotency_key: str | None = None


class Outcome(msgspec.Struct, kw_only=True, frozen=True):
    record: InterventionRecord
    applied: bool  # False: an earlier request with the same idempotency key had already acted


@dataclass(frozen=True)
class ModelChange:
    """What a model action did to the registry: the states its record keeps, and `undo`, which moves the deployed
    pointer back should the record not be kept (True when it did or nothing was deployed; False when the pointer
    had moved on meanwhile, and stays)."""

    before: dict[str, Any]
    after: dict[str, Any]
    undo: Callable[[], bool]


class ModelControl(Protocol):
    """The registry operations a model action uses."""

    def __call__(self, request: InterventionRequest) -> ModelChange: ...


class InterventionRefused(FleetwatchError):
    """The request cannot be applied as asked (unknown alert, no registry, a refused version)."""


class ModelChangeUnrecorded(FleetwatchError):
    """A model action changed the registry and the store failed to record it; `undone` says whether the change was
    moved back (else it stands without an audit record)."""

    def __init__(self, message: str, undone: bool) -> None:
        super().__init__(message)
        self.undone = undone


class InterventionDesk:
    def __init__(
        self,
        store: ConsoleStore,
        model_control: ModelControl | None = None,
        on_applied: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._model_control = model_control
        self._on_applied = on_applied  # e.g. wake the exporter

    def apply(self, request: InterventionRequest) -> Outcome:
        if not request.reason.strip():
            raise InterventionRefused("every action needs a reason")
        if request.idempotency_key and (earlier := self._by_key(request.idempotency_key)):
            return Outcome(record=earlier, applied=False)
        change = None
        if request.action in MODEL_ACTIONS:
            if self._model_control is None:
                raise InterventionRefused("this console has no model registry")
            change = self._model_control(request)
        try:
            outcome = self._record(request, change)
        except Exception as exc:  # whatever failed the transaction, the change it was to record has no record
            if change is None:
                raise
            raise _unrecorded(request, change, exc) from exc
        if outcome.applied:
            actor = "automation" if request.actor == SYSTEM_ACTOR else "person"
            CONSOLE_ACTIONS.labels(request.action.value, actor).inc()
            self._on_applied()
        return outcome

    def _record(self, request: InterventionRequest, change: ModelChange | None) -> Outcome:
        """Keep the intervention and its audit record in one transaction, changing the entity's state or label
        there (a model action's change is made already)."""
        with self._store.transaction() as tx:
            if request.idempotency_key and (earlier := self._by_key(request.idempotency_key, tx)):
                return Outcome(record=earlier, applied=False)
            before, after = (change.before, change.after) if change else self._change_state(tx, request)
            record = InterventionRecord(
                id=uuid.uuid4().hex,
                action=request.action.value,
                target=request.target,
                reason=request.reason,
                actor=request.actor,
                alert_id=request.alert_id,
                before=before,
                after=after,
                acted_at=now_iso(),
                request_id=request.request_id,
                idempotency_key=request.idempotency_key,
            )
            _insert(tx, record)
            audit_log.append(
                tx,
                audit_log.AuditDraft(
                    actor=request.actor,
                    action=request.action.value,
                    target=request.target,
                    reason=request.reason,
                    before=before,
                    after=after,
                    request_id=request.request_id,
                ),
            )
        return Outcome(record=record, applied=True)

    def _change_state(self, tx: Transaction, request: InterventionRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        if request.action in LABEL_ACTIONS:
            return _label(tx, request)
        kind, state = _EFFECTS[request.action]
        rows = tx.rows("SELECT state FROM entity_controls WHERE kind = ? AND target = ?", (kind, request.target))
        before = rows[0]["state"] if rows else _UNSET[kind]
        tx.run("DELETE FROM entity_controls WHERE kind = ? AND target = ?", (kind, request.target))
        tx.run(
            "INSERT INTO entity_controls (kind, target, state, updated_at) VALUES (?, ?, ?, ?)",
            (kind, request.target, state, now_iso()),
        )
        return {kind: before}, {kind: state}

    def _by_key(self, key: str, tx: Transaction | None = None) -> InterventionRecord | None:
        sql, params = f"SELECT {_COLUMNS} FROM interventions WHERE idempotency_key = ?", (key,)
        rows = tx.rows(sql, params) if tx is not None else self._store.rows(sql, params)
        return _record(rows[0]) if rows else None


def _unrecorded(request: InterventionRequest, change: ModelChange, error: Exception) -> ModelChangeUnrecorded:
    """Undo a registry change the store could not record; the caller's error says whether it was undone, the log
    also why the store failed (the driver's message can name hosts and users)."""
    undo_error = None
    try:
        undone = change.undo()
    except Exception as exc:  # the registry failing too (Redis down): the change stands, and the answer says so
        undone, undo_error = False, f"{type(exc).__name__}: {exc}"
    log.error(
        "model action not recorded: the store failed",
        action=request.action.value,
        target=request.target,
        actor=request.actor,
        request_id=request.request_id,
        before=change.before,
        after=change.after,
        error=f"{type(error).__name__}: {error}",
        undone=undone,
        undo_error=undo_error,
    )
    outcome = (
        "the change was undone"
        if undone
        else "the change was NOT undone: "
        + ("another deploy replaced it since" if undo_error is None else "the registry did not answer")
    )
    return ModelChangeUnrecorded(
        f"{request.action.value} of {request.target} changed the model registry but the store could not record it "
        f"(see the log, request {request.request_id}); {outcome}",
        undone,
    )


def _label(tx: Transaction, request: InterventionRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """An analyst's verdict on an alert, kept per alert (the latest wins) for `labels_for_trainer`."""
    alerts = tx.rows("SELECT event_id FROM alerts WHERE id = ?", (request.target,))
    if not alerts:
        raise InterventionRefused(f"no alert {request.target!r}")
    earlier = tx.rows("SELECT is_anomaly FROM alert_labels WHERE alert_id = ?", (request.target,))
    before = _verdict(bool(earlier[0]["is_anomaly"])) if earlier else "unlabelled"
    is_anomaly = request.action is Action.LABEL_TRUE_POSITIVE
    tx.run("DELETE FROM alert_labels WHERE alert_id = ?", (request.target,))
    tx.run(
        "INSERT INTO alert_labels (alert_id, event_id, is_anomaly, labelled_by, labelled_at) VALUES (?, ?, ?, ?, ?)",
        (request.target, alerts[0]["event_id"], int(is_anomaly), request.actor, now_iso()),
    )
    return {"label": before}, {"label": _verdict(is_anomaly)}


def _verdict(is_anomaly: bool) -> str:
    return "true_positive" if is_anomaly else "false_positive"


_COLUMNS = (
    "id, action, target, reason, actor, alert_id, before_state, after_state, acted_at, request_id, idempotency_key"
)


def _insert(tx: Transaction, record: InterventionRecord) -> None:
    tx.run(
        f"INSERT INTO interventions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.action,
            record.target,
            record.reason,
            record.actor,
            record.alert_id,
            msgspec.json.encode(record.before).decode(),
            msgspec.json.encode(record.after).decode(),
            record.acted_at,
            record.request_id,
            record.idempotency_key,
        ),
    )


def _record(row: Row) -> InterventionRecord:
    return InterventionRecord(
        **{key: row[key] for key in ("id", "action", "target", "reason", "actor", "alert_id", "acted_at")},
        before=msgspec.json.decode(row["before_state"]),
        after=msgspec.json.decode(row["after_state"]),
        request_id=row["request_id"],
        idempotency_key=row["idempotency_key"],
    )


def recent_interventions(store: ConsoleStore, target: str | None = None, limit: int = 100) -> list[InterventionRecord]:
    where, params = ("WHERE target = ?", (target,)) if target else ("", ())
    rows = store.rows(f"SELECT {_COLUMNS} FROM interventions {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
    return [_record(row) for row in rows]


def entity_controls(store: ConsoleStore, target: str) -> dict[str, str]:
    """The current state of every control set on `target` (account, transaction, authentication)."""
    rows = store.rows("SELECT kind, state FROM entity_controls WHERE target = ?", (target,))
    return {row["kind"]: row["state"] for row in rows}


def labels_for_trainer(store: ConsoleStore) -> list[dict[str, Any]]:
    """Analysts' verdicts as rows of the labels format `shared.event_files.read_labels` reads."""
    rows = store.rows("SELECT event_id, is_anomaly FROM alert_labels ORDER BY event_id")
    return [
        {
            "event_id": row["event_id"],
            "is_anomaly": bool(row["is_anomaly"]),
            "anomaly_kind": "analyst_confirmed" if row["is_anomaly"] else "",
        }
        for row in rows
    ]


# --- the export outbox: interventions and audit records not yet acknowledged by Kafka ------------------
def unpublished(store: ConsoleStore, limit: int = 500) -> tuple[list[InterventionRecord], list[audit_log.AuditEntry]]:
    records = [
        _record(row)
        for row in store.rows(
            f"SELECT {_COLUMNS} FROM interventions WHERE published = 0 ORDER BY seq LIMIT ?", (limit,)
        )
    ]
    return records, audit_log.read_unpublished(store, limit)


def mark_published(store: ConsoleStore, records: list[InterventionRecord], entries: list[audit_log.AuditEntry]) -> None:
    with store.transaction() as tx:
        for record in records:
            tx.run("UPDATE interventions SET published = 1 WHERE id = ?", (record.id,))
        for entry in entries:
            tx.run("UPDATE audit_log SET published = 1 WHERE seq = ?", (entry.seq,))
