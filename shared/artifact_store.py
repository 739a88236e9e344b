"""Where model artifact bytes live: in Redis (pods need no shared volume) or in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from shared.errors import FleetwatchError
from shared.redis_connection import RedisClient


class ArtifactMissing(FleetwatchError):
    pass


class ArtifactStore(Protocol):
    def put(self, stream: str, version: int, payload: bytes) -> None: ...

    def get(self, stream: str, version: int) -> bytes: ...


class RedisArtifactStore:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, stream: str, version: int) -> str:
        return f"{self._prefix}artifact:{stream}:{version}"

    def put(self, stream: str, version: int, payload: bytes) -> None:
        self._client.set(self._key(stream, version), payload)

    def get(self, stream: str, version: int) -> bytes:
        payload = self._client.get(self._key(stream, version))
        if payload is None:
            raise ArtifactMissing(f"no artifact for {stream} v{version} in Redis")
        return bytes(payload)  # type: ignore[arg-type]


class FileArtifactStore:
    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, stream: str, version: int) -> Path:
        return self._folder / stream / f"v{version}.joblib"

    def put(self, stream: str, version: int, payload: bytes) -> None:
        path = self._path(stream, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(payload)
        temporary.replace(path)  # readers never see half an artifact

    def get(self, stream: str, version: int) -> bytes:
        try:
            return self._path(stream, version).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"no artifact for {stream} v{version} in {self._folder}") from exc
