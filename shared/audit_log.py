"""The console's audit log: append-only, each record chained to the one before by a SHA-256 hash.

A record's hash covers its own fields and the previous record's hash, so changing, removing or
reordering any record breaks every later link; `verify_chain` finds the first broken one. Removing the
newest records leaves a shorter intact chain: `verify_store` finds that against the interventions, one
per record. The chain proves the log was not edited in place; a copy on the `audit` topic (exported by
the console) is what survives someone who rewrites the whole table.

>>> first = seal(GENESIS, 1, AuditDraft(actor="ann", action="lock_account", target="u1", reason="fraud",
...                                     before={"state": "unlocked"}, after={"state": "locked"},
...                                     request_id="r1"), acted_at="2026-01-01T00:00:00+00:00")
>>> verify_chain([first]).ok
True
>>> verify_chain([msgspec.structs.replace(first, reason="nothing to see")]).first_bad_seq
1
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

from shared.console_store import ConsoleStore, Row, Transaction
from shared.output_records import now_iso

GENESIS = "0" * 64


class AuditDraft(msgspec.Struct, kw_only=True, frozen=True):
    """Who did what to which target, why, the state before and after, and the request that carried it."""

    actor: str
    action: str
    target: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    request_id: str


class AuditEntry(AuditDraft, kw_only=True, frozen=True):
    """One sealed record (a draft with its number, time and links), as stored and exported to `audit`."""

    seq: int
    acted_at: str
    prev_hash: str
    hash: str


class ChainVerdict(msgspec.Struct, kw_only=True, frozen=True):
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""


_CANONICAL = msgspec.json.Encoder(order="sorted")


def _draft_fields(draft: AuditDraft) -> dict[str, Any]:
    """The draft's own fields (of a sealed entry too, without its number, time and links)."""
    return {name: getattr(draft, name) for name in AuditDraft.__struct_fields__}


def entry_hash(prev_hash: str, seq: int, acted_at: str, draft: AuditDraft) -> str:
    """SHA-256 over the previous hash and this record's fields, in canonical (sorted-key) JSON; `draft` may be
    a sealed entry, whose own links are left out."""
    fields = {"seq": seq, "acted_at": acted_at, **_draft_fields(draft)}
    return hashlib.sha256(prev_hash.encode() + b"\n" + _CANONICAL.encode(fields)).hexdigest()


def seal(prev_hash: str, seq: int, draft: AuditDraft, acted_at: str) -> AuditEntry:
    return AuditEntry(
        seq=seq,
        acted_at=acted_at,
        **_draft_fields(draft),
        prev_hash=prev_hash,
        hash=entry_hash(prev_hash, seq, acted_at, draft),
    )


def append(tx: Transaction, draft: AuditDraft) -> AuditEntry:
    """Seal `draft` after the chain's last record and store it, inside the caller's transaction."""
    tx.lock_chain()
    head = tx.rows("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    prev_hash, seq = (head[0]["hash"], int(head[0]["seq"]) + 1) if head else (GENESIS, 1)
    entry = seal(prev_hash, seq, draft, acted_at=now_iso())
    tx.run(
        "INSERT INTO audit_log (seq, acted_at, actor, action, target, reason, before_state, after_state, "
        "request_id, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            entry.acted_at,
            entry.actor,
            entry.action,
            entry.target,
            entry.reason,
            _CANONICAL.encode(entry.before).decode(),
            _CANONICAL.encode(entry.after).decode(),
            entry.request_id,
            entry.prev_hash,
            entry.hash,
        ),
    )
    return entry


def entry_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]),
        acted_at=row["acted_at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        reason=row["reason"],
        before=msgspec.json.decode(row["before_state"]),
        after=msgspec.json.decode(row["after_state"]),
        request_id=row["request_id"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


_COLUMNS = "seq, acted_at, actor, action, target, reason, before_state, after_state, request_id, prev_hash, hash"


def latest_entries(store: ConsoleStore, limit: int) -> list[AuditEntry]:
    rows = store.rows(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT ?", (limit,))
    return [entry_from_row(row) for row in rows]


def read_unpublished(store: ConsoleStore, limit: int) -> list[AuditEntry]:
    """Records not yet acknowledged by the `audit` topic, oldest first."""
    rows = store.rows(f"SELECT {_COLUMNS} FROM audit_log WHERE published = 0 ORDER BY seq LIMIT ?", (limit,))
    return [entry_from_row(row) for row in rows]


def verify_chain(entries: Iterable[AuditEntry]) -> ChainVerdict:
    """Check every link from the genesis: numbering without gaps, each prev_hash, each recomputed hash."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for entry in entries:
        problem = ""
        if entry.seq != expected_seq:
            problem = f"expected record {expected_seq}, found {entry.seq} (a record was removed or inserted)"
        elif entry.prev_hash != prev_hash:
            problem = "its prev_hash is not the previous record's hash"
        elif entry.hash != entry_hash(prev_hash, entry.seq, entry.acted_at, entry):
            problem = "its hash does not match its fields (the record was modified)"
        if problem:
            return ChainVerdict(ok=False, checked=checked, first_bad_seq=entry.seq, problem=problem)
        prev_hash, expected_seq, checked = entry.hash, expected_seq + 1, checked + 1
    return ChainVerdict(ok=True, checked=checked)


def verify_store(store: ConsoleStore) -> ChainVerdict:
    """The chain, then its length against the interventions: `InterventionDesk.apply` writes each intervention with
    exactly one audit record in one transaction, so the newest records removed (which leaves an intact, shorter
    chain) show as interventions without their record. Both are read under the chain's lock, as of one moment.
    Not found here: the newest records removed together with their interventions (the `audit` topic's copy is
    what shows that)."""
    with store.transaction() as tx:
        tx.lock_chain()
        entries = [entry_from_row(row) for row in tx.rows(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq")]
        interventions = int(tx.rows("SELECT COUNT(*) AS n FROM interventions")[0]["n"])
    verdict = verify_chain(entries)
    if not verdict.ok or interventions == verdict.checked:
        return verdict
    if interventions > verdict.checked:
        problem = (
            f"{interventions} interventions but {verdict.checked} audit records: "
            f"records {verdict.checked + 1} to {interventions} were removed"
        )
        return ChainVerdict(ok=False, checked=verdict.checked, first_bad_seq=verdict.checked + 1, problem=problem)
    problem = f"{verdict.checked} audit records but {interventions} interventions: interventions were removed"
    return ChainVerdict(ok=False, checked=verdict.checked, problem=problem)
