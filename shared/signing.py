"""HMAC-SHA256 signatures for model versions, checked before anything is unpickled."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from shared.config import FleetwatchSettings, dev_dir
from shared.errors import FleetwatchError

DEV_KEY_FILE_NAME = "registry.key"


class SigningKeyError(FleetwatchError):
    pass


def sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def signature_matches(key: bytes, payload: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, payload), signature)


def content_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def signing_key(settings: FleetwatchSettings) -> bytes:
    """The key from FLEETWATCH_REGISTRY_KEY, else FLEETWATCH_REGISTRY_KEY_FILE, else a local dev key.

    The dev key (in .fleetwatch/) exists so the local stack works out of the box; deployments set one.
    """
    if settings.registry_key is not None:
        key = settings.registry_key.get_secret_value().encode()
    elif settings.registry_key_file is not None:
        try:
            key = Path(settings.registry_key_file).read_bytes().strip()
        except OSError as exc:
            raise SigningKeyError(f"cannot read the registry key file: {exc}") from exc
    else:
        path = dev_dir() / DEV_KEY_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        key = path.read_bytes().strip()
    if len(key) < 16:
        raise SigningKeyError("the registry key must be at least 16 bytes")
    return key
