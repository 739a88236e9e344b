"""Who may use the operations console and what each role may do.

Users live in the console store with argon2id password hashes (argon2-cffi's defaults). A login
returns a bearer JWT (HS256) from the console's own issuer: subject, role, issuer, audience, expiry,
id. `PERMISSIONS` is the one table that says what each role may do; every endpoint names the one
permission it needs. Login attempts are throttled per user name and client address, and at most
`CONCURRENT_HASHES` password hashes (64 MiB each) run at once, so a burst of logins cannot exhaust memory.

>>> sorted(p.value for p in PERMISSIONS[Role.ANALYST])
['label_alerts', 'read', 'read_audit']
>>> issuer = TokenIssuer(b"k" * 32, ttl_s=60)
>>> issuer.verify(issuer.issue("ann", Role.OPERATOR)).role
<Role.OPERATOR: 'operator'>
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.console_store import ConsoleStore
from shared.errors import FleetwatchError
from shared.output_records import now_iso

ISSUER = "fleetwatch-console"

CONCURRENT_HASHES = 2
"""Password hashes (argon2id, 64 MiB each) running at once in one process: the memory login may take."""

HASH_SLOT_WAIT_S = 2.0
"""How long a login waits for a hash slot before it is refused as busy (a hash takes 0.1-0.5 s)."""


class Role(enum.StrEnum):
    VIEWER = "viewer"
    ANALYST = "analyst"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    READ = "read"  # alerts, entity histories, versions, window reports, interventions
    READ_AUDIT = "read_audit"  # the audit log and its verification
    LABEL_ALERTS = "label_alerts"  # mark an alert true or false positive
    INTERVENE = "intervene"  # lock/unlock accounts, block/release transactions, require extra authentication
    MANAGE_MODELS = "manage_models"  # promote, roll back, choose threshold methods


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.ANALYST: frozenset({Permission.READ, Permission.READ_AUDIT, Permission.LABEL_ALERTS}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.READ_AUDIT, Permission.LABEL_ALERTS, Permission.INTERVENE}),
    Role.ADMIN: frozenset(Permission),
}


class AuthenticationFailed(FleetwatchError):
    """No valid credentials: a missing, expired, forged or malformed token, or a wrong password."""


class PasswordCheckBusy(FleetwatchError):
    """Every hash slot stayed taken for `HASH_SLOT_WAIT_S`: the password was not checked, or not stored (try again
    shortly)."""


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


class TokenIssuer:
    """Issues and verifies the console's JWTs; only HS256 with this key, issuer and audience is accepted."""

    def __init__(self, key: bytes, ttl_s: int) -> None:
        if len(key) < 32:
            raise FleetwatchError("the console signing key must be at least 32 bytes")
        self._key = key
        self.ttl_s = ttl_s

    def issue(self, username: str, role: Role, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "sub": username,
            "role": role.value,
            "iss": ISSUER,
            "aud": ISSUER,
            "iat": issued,
            "exp": issued + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=ISSUER,
                issuer=ISSUER,
                options={"require": ["sub", "role", "exp", "iat", "iss", "aud"]},
            )
            return Principal(str(claims["sub"]), Role(claims["role"]))
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("the token has expired; log in again") from exc
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise AuthenticationFailed(f"invalid token ({type(exc).__name__})") from exc


def signing_key(key: str | None, key_file: Path | None, dev_dir: Path) -> bytes:
    """The JWT key: given, from a file, or (development) generated once into `dev_dir` with mode 0600."""
    if key:
        return key.encode()
    if key_file is not None:
        return key_file.read_bytes().strip()
    generated = dev_dir / "console-signing.key"
    if not generated.exists():
        dev_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return generated.read_bytes().strip()


class UserDirectory:
    """Console users in the store; passwords as argon2id hashes, rehashed on login when parameters change.
    Every hash runs in one of `concurrent_hashes` slots, which bounds the memory logins take."""

    def __init__(self, store: ConsoleStore, concurrent_hashes: int = CONCURRENT_HASHES) -> None:
        self._store = store
        self._hasher = PasswordHasher()
        self._hash_slots = threading.BoundedSemaphore(concurrent_hashes)

    @contextmanager
    def _hash_slot(self) -> Iterator[None]:
        if not self._hash_slots.acquire(timeout=HASH_SLOT_WAIT_S):
            raise PasswordCheckBusy("too many logins at once; try again in a second")
        try:
            yield
        finally:
            self._hash_slots.release()

    @functools.cached_property
    def _decoy(self) -> str:
        """Spending a hash's time on unknown names too keeps them from being told apart by timing."""
        return self._hasher.hash(secrets.token_hex(16))

    def put(self, username: str, password: str, role: Role) -> None:
        """Create the user, or set a new password and role."""
        if not username or len(password) < 8:
            raise FleetwatchError("a user needs a name and a password of at least 8 characters")
        with self._hash_slot():
            hashed = self._hasher.hash(password)
        with self._store.transaction() as tx:
            tx.run("DELETE FROM console_users WHERE username = ?", (username,))
            tx.run(
                "INSERT INTO console_users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (username, hashed, role.value, now_iso()),
            )

    def authenticate(self, username: str, password: str) -> Principal:
        """The user's principal; AuthenticationFailed, or PasswordCheckBusy when no hash slot came free."""
        rows = self._store.rows("SELECT password_hash, role FROM console_users WHERE username = ?", (username,))
        with self._hash_slot():
            stored = rows[0]["password_hash"] if rows else self._decoy
            try:
                self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                raise AuthenticationFailed("wrong user name or password") from None
        if not rows:
            raise AuthenticationFailed("wrong user name or password")
        if self._hasher.check_needs_rehash(stored):
            with contextlib.suppress(PasswordCheckBusy):  # the password was right: rehash at a later login instead
                self.put(username, password, Role(rows[0]["role"]))
        return Principal(username, Role(rows[0]["role"]))

    def list(self) -> list[tuple[str, Role]]:
        return [
            (row["username"], Role(row["role"]))
            for row in self._store.rows("SELECT username, role FROM console_users ORDER BY username")
        ]


class LoginThrottle:
    """At most `max_failures` login attempts per (user name, client address) in `window_s`; then a pause
    until the oldest attempt leaves the window. A success clears the record.

    `admit` checks and counts under one lock, before the slow password check: parallel guesses cannot all pass
    the check before any of them is counted. Entries whose attempts all left the window are dropped.

    >>> throttle = LoginThrottle(max_failures=2, window_s=60)
    >>> [throttle.admit("ann", "10.0.0.1", now=t) for t in (0.0, 1.0, 2.0)]
    [0.0, 0.0, 58.0]
    >>> throttle.admit("ann", "10.0.0.1", now=61.0)
    0.0
    """

    def __init__(self, max_failures: int, window_s: float) -> None:
        self._max = max_failures
        self._window_s = window_s
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._swept = -math.inf
        self._lock = threading.Lock()

    def admit(self, username: str, address: str, now: float | None = None) -> float:
        """0 when a login may be tried now (and this attempt is counted), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._sweep(now)
            attempts = self._attempts.setdefault((username, address), deque())
            while attempts and attempts[0] <= now - self._window_s:
                attempts.popleft()
            if len(attempts) >= self._max:
                return attempts[0] + self._window_s - now
            attempts.append(now)
            return 0.0

    def withdraw(self, username: str, address: str) -> None:
        """Uncount one admitted attempt whose password was never checked (no hash slot came free)."""
        with self._lock:
            attempts = self._attempts.get((username, address))
            if attempts:
                attempts.pop()
            if not attempts:
                self._attempts.pop((username, address), None)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._attempts.pop((username, address), None)

    def _sweep(self, now: float) -> None:
        """Once a window, drop the pairs whose newest attempt left it: memory follows recent attempts only."""
        if now - self._swept < self._window_s:
            return
        self._swept = now
        for key in [
            key for key, attempts in self._attempts.items() if not attempts or attempts[-1] <= now - self._window_s
        ]:
            del self._attempts[key]
