"""The model registry: immutable numbered versions per stream, signed, with a deployed pointer.

Redis holds the index (signed manifests), the deployed pointer and its history per stream, and
publishes a notice on one channel whenever a version is published or a pointer moves. Artifact
bytes go to a pluggable store. Loading checks the manifest's signature, then the artifact's hash
and signature, and only then unpickles; anything else is refused with the reason. A trained candidate
deploys only over the version its gate compared it with (`publish_over`, one script in Redis), so a
pointer moved meanwhile, by an operator's rollback say, stays where it was moved. A deploy that cannot
stand (the console failed to record it) is moved back the same way, only from the version it set (`move_back`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.artifact_store import ArtifactMissing, ArtifactStore, FileArtifactStore, RedisArtifactStore
from shared.config import FleetwatchSettings
from shared.errors import FleetwatchError
from shared.model_version import ArtifactRef, DeployedVersion, Manifest, ModelBundle
from shared.redis_connection import RedisClient, connect_redis
from shared.signing import content_hash, sign, signature_matches, signing_key
from shared.streams.catalog import CATALOG
from shared.thresholds import ThresholdMethod

WRITE_SCRIPT = """
local current = redis.call('GET', KEYS[3]) or ''
local deploy = ARGV[1] == '1' and (ARGV[2] == '*' or ARGV[2] == current)
local body, signature = ARGV[5], ARGV[6]
if deploy then body, signature = ARGV[3], ARGV[4] end
redis.call('HSET', KEYS[1], 'body', body, 'signature', signature)
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[7])
if deploy then
  redis.call('SET', KEYS[3], ARGV[7])
  redis.call('RPUSH', KEYS[4], ARGV[7])
  return 1
end
return 0
"""
"""Write a manifest and, when asked (ARGV[1]), point the stream at it, but only while the pointer is at ARGV[2]
('*': wherever it is, '': at no version); the manifest written is ARGV[3..4] when deployed, else ARGV[5..6].
KEYS: manifest, versions, deployed, history (one hash tag); returns 1 when it deployed."""

ANY_VERSION = "*"

ROLLBACK_SCRIPT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 3, #ARGV do redis.call('LREM', KEYS[2], 0, ARGV[i]) end
return 1
"""
"""Point the stream at ARGV[2] only while it is at ARGV[1], and drop ARGV[3..] (the version rolled back from and
those passed over) from its history. KEYS: deployed, history (one hash tag); returns 1 when it moved."""

MOVE_BACK_SCRIPT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 1
"""
"""Point the stream back at ARGV[2] ('': at no version) and set its history to ARGV[3..], only while it is at
ARGV[1]. KEYS: deployed, history (one hash tag); returns 1 when it moved."""


class VersionRefused(FleetwatchError):
    """A version that is missing, unsigned, tampered with or signed with another key."""


@dataclass(frozen=True)
class RefusedVersion:
    """A version that does not verify (tampered, unsigned, another key), listed with why instead of failing the
    listing of the others."""

    version: int
    reason: str


@dataclass(frozen=True)
class Rollback:
    """The version a rollback deployed, and the more recent earlier ones it passed over because they do not
    load."""

    deployed: DeployedVersion
    skipped: list[RefusedVersion]

    @property
    def version(self) -> int:
        return self.deployed.version


class Notice(msgspec.Struct, kw_only=True):
    stream: str
    version: int
    event: str  # published | deployed
    at: float


@dataclass(frozen=True)
class RegistryKeys:
    """A stream's keys share the hash tag `{<prefix>registry:<stream>}`: one slot on a Redis Cluster, so a
    publish or a pointer move stays one transaction."""

    prefix: str

    def _tag(self, stream: str) -> str:
        return f"{{{self.prefix}registry:{stream}}}"

    def manifest(self, stream: str, version: int) -> str:
        return f"{self._tag(stream)}:manifest:{version}"

    def versions(self, stream: str) -> str:
        return f"{self._tag(stream)}:versions"

    def counter(self, stream: str) -> str:
        return f"{self._tag(stream)}:next"

    def deployed(self, stream: str) -> str:
        return f"{self._tag(stream)}:deployed"

    def history(self, stream: str) -> str:
        return f"{self._tag(stream)}:history"

    @property
    def notices(self) -> str:
        return f"{self.prefix}registry:notices"


class ModelRegistry:
    def __init__(self, client: RedisClient, store: ArtifactStore, key: bytes, prefix: str) -> None:
        self._redis = client
        self._store = store
        self._key = key
        self.keys = RegistryKeys(prefix)
        self._write = client.register_script(WRITE_SCRIPT)
        self._roll_back = client.register_script(ROLLBACK_SCRIPT)
        self._move_back = client.register_script(MOVE_BACK_SCRIPT)

    # --- writing -------------------------------------------------------------------------------
    def publish(self, bundle: ModelBundle, draft: Manifest, deploy: bool) -> Manifest:
        """Store a new version (numbered here) and, with `deploy`, point the stream at it."""
        return self._publish(bundle, draft, deploy, ANY_VERSION)[0]

    def publish_over(
        self, bundle: ModelBundle, draft: Manifest, compared_with: int | None, deploy: bool = True
    ) -> tuple[Manifest, bool]:
        """Store a new version that a gate judged against `compared_with` (None: no version was deployed) and, with
        `deploy`, deploy it only if the pointer is still there; True when it did. A pointer moved meanwhile (an
        operator's rollback) stays where it is, and the version is published with a note that says so."""
        return self._publish(bundle, draft, deploy, "" if compared_with is None else str(compared_with))

    def _publish(self, bundle: ModelBundle, draft: Manifest, deploy: bool, replacing: str) -> tuple[Manifest, bool]:
        version = int(self._redis.incr(self.keys.counter(draft.stream)))
        payload = bundle.to_bytes()
        self._store.put(draft.stream, version, payload)
        artifact = ArtifactRef(
            version=version, sha256=content_hash(payload), signature=sign(self._key, payload), size=len(payload)
        )
        manifest = msgspec.structs.replace(
            draft, version=version, artifact=artifact, created_at=datetime.now(UTC).isoformat()
        )
        return self._write_manifest(manifest, deploy, replacing)

    def derive_with_thresholds(self, stream: str, version: int, methods: dict[str, str]) -> Manifest:
        """A new version with other active threshold methods and the same artifact bytes.

        Versions stay immutable; if `version` is deployed, the new one is deployed in its place,
        which reaches the workers like any new version.
        """
        base = self.manifest(stream, version)
        detectors = []
        for entry in base.detectors:
            method = methods.get(entry.name, entry.active_method)
            ThresholdMethod(method)  # refuses an unknown method name with the valid ones
            detectors.append(msgspec.structs.replace(entry, active_method=method))
        if unknown := set(methods) - {entry.name for entry in base.detectors}:
            raise FleetwatchError(f"v{version} has no detector(s) {sorted(unknown)}")
        new_version = int(self._redis.incr(self.keys.counter(stream)))
        manifest = msgspec.structs.replace(
            base,
            version=new_version,
            parent_version=version,
            created_at=datetime.now(UTC).isoformat(),
            detectors=detectors,
            note=f"thresholds of v{version}: " + ", ".join(f"{d.name}={d.active_method}" for d in detectors),
        )
        self._write_manifest(manifest, deploy=self.deployed_version(stream) == version)
        return manifest

    def _write_manifest(self, manifest: Manifest, deploy: bool, replacing: str = ANY_VERSION) -> tuple[Manifest, bool]:
        """Write the manifest and, with `deploy`, move the pointer to it while it is at `replacing`, in one step;
        the manifest as written (its note says why when the pointer had moved) and whether it deployed."""
        stream, version = manifest.stream, manifest.version
        held_back = manifest
        if deploy and replacing != ANY_VERSION:
            was = f"v{replacing}" if replacing else "no version"
            held_back = msgspec.structs.replace(
                manifest,
                note=f"{manifest.note}; not deployed: the deployed version moved away from {was}, which it was "
                f"compared with, while it was trained; promote it by hand: "
                f"`fleetwatch models promote {version} --stream {stream}`",
            )
        args: list[str | bytes | int] = ["1" if deploy else "0", replacing]
        for written in (manifest, held_back):
            body = msgspec.json.encode(written)
            args += [body, sign(self._key, body)]
        keys = [self.keys.manifest(stream, version), self.keys.versions(stream)]
        keys += [self.keys.deployed(stream), self.keys.history(stream)]
        deployed = self._write(keys=keys, args=[*args, version]) == 1
        self._notify(stream, version, "published")
        if deployed:
            self._notify(stream, version, "deployed")
        return (manifest if deployed else held_back), deployed

    def promote(self, stream: str, version: int) -> DeployedVersion:
        """Point the stream at `version` after proving it loads; a refused version moves nothing."""
        loaded = self.load(stream, version)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.keys.deployed(stream), version)
        pipe.rpush(self.keys.history(stream), version)
        pipe.execute()
        self._notify(stream, version, "deployed")
        return loaded

    def rollback(self, stream: str, from_version: int | None = None) -> Rollback:
        """Deploy the version that was deployed before the current one; one that does not load (a manifest
        signed with a rotated-out key, say) is passed over for the one deployed before it, and leaves the history
        with the current one. The pointer moves only while it is at the version this started from (`from_version`
        when given): one moved meanwhile (a trainer deployed, another rollback) is left, and this refused."""
        current = self.deployed_version(stream)
        if from_version is not None and from_version != current:
            raise FleetwatchError(
                f"{stream} deploys v{current}, not v{from_version}: nothing rolled back (rolled back already?)"
            )
        earlier = list(dict.fromkeys(v for v in reversed(self.deployed_history(stream)) if v != current))
        if current is None or not earlier:
            raise FleetwatchError(f"{stream}: no earlier deployed version to roll back to")
        skipped: list[RefusedVersion] = []
        for target in earlier:
            try:
                loaded = self.load(stream, target)
            except VersionRefused as exc:
                skipped.append(RefusedVersion(target, str(exc)))
                continue
            keys = [self.keys.deployed(stream), self.keys.history(stream)]
            dropped = [current, *(refused.version for refused in skipped)]
            if not self._roll_back(keys=keys, args=[current, target, *dropped]):
                raise FleetwatchError(
                    f"{stream}: the deployed version moved from v{current} during the rollback; nothing rolled back"
                )
            self._notify(stream, target, "deployed")
            return Rollback(loaded, skipped)
        raise VersionRefused(
            f"{stream}: no earlier deployed version loads; the pointer stays at v{current}: "
            + "; ".join(refused.reason for refused in skipped)
        )

    def move_back(self, stream: str, moved_to: int, deployed: int | None, history: list[int]) -> bool:
        """Undo a deploy that cannot stand (the console could not record it): point the stream back at `deployed`
        (None: at no version) with its `history` as it was, only while it is at `moved_to`, the version the deploy
        set; True when it moved. A pointer moved on meanwhile (a trainer deployed) stays, like its history."""
        keys = [self.keys.deployed(stream), self.keys.history(stream)]
        if not self._move_back(keys=keys, args=[moved_to, "" if deployed is None else deployed, *history]):
            return False
        if deployed is not None:
            self._notify(stream, deployed, "deployed")
        return True

    def _notify(self, stream: str, version: int, event: str) -> None:
        notice = Notice(stream=stream, version=version, event=event, at=time.time())
        self._redis.publish(self.keys.notices, msgspec.json.encode(notice))

    # --- reading -------------------------------------------------------------------------------
    def deployed_version(self, stream: str) -> int | None:
        value = self._redis.get(self.keys.deployed(stream))
        return int(value) if value is not None else None

    def deployed_history(self, stream: str) -> list[int]:
        """The versions deployed, oldest first, that a rollback goes back through."""
        return [int(v) for v in self._redis.lrange(self.keys.history(stream), 0, -1)]

    def version_numbers(self, stream: str) -> list[int]:
        return [int(v) for v in self._redis.zrange(self.keys.versions(stream), 0, -1)]  # type: ignore[arg-type]

    def manifest(self, stream: str, version: int) -> Manifest:
        """The manifest, after checking its signature."""
        record: dict[bytes, bytes] = self._redis.hgetall(self.keys.manifest(stream, version))  # type: ignore[assignment]
        if not record:
            raise VersionRefused(f"{stream} v{version} does not exist")
        body, signature = record.get(b"body"), record.get(b"signature")
        if not body or not signature:
            raise VersionRefused(f"{stream} v{version}: the manifest has no signature")
        if not signature_matches(self._key, body, signature.decode()):
            raise VersionRefused(
                f"{stream} v{version}: the manifest's signature does not match (tampered or another key)"
            )
        try:
            return msgspec.json.decode(body, type=Manifest)
        except msgspec.DecodeError as exc:  # signed, by a build whose manifests differ from this build's
            raise VersionRefused(f"{stream} v{version}: the manifest does not decode in this build ({exc})") from exc

    def versions(self, stream: str) -> list[Manifest | RefusedVersion]:
        """Every version of the stream, oldest first: its verified manifest, or why it is refused."""
        listed: list[Manifest | RefusedVersion] = []
        for version in self.version_numbers(stream):
            try:
                listed.append(self.manifest(stream, version))
            except VersionRefused as exc:
                listed.append(RefusedVersion(version, str(exc)))
        return listed

    def load(self, stream: str, version: int) -> DeployedVersion:
        """Verify the manifest (signature, stream, feature spec) and the artifact's hash and signature, then
        unpickle and assemble. Anything that goes wrong, unpickling included, is a refusal with its reason."""
        manifest = self.manifest(stream, version)
        if problem := _manifest_problem(stream, manifest):
            raise VersionRefused(f"{stream} v{version}: {problem}; retrain with `fleetwatch train --stream {stream}`")
        try:
            payload = self._store.get(stream, manifest.artifact.version)
        except ArtifactMissing as exc:
            raise VersionRefused(str(exc)) from exc
        if content_hash(payload) != manifest.artifact.sha256:
            raise VersionRefused(f"{stream} v{version}: the artifact's hash does not match its manifest (tampered)")
        if not signature_matches(self._key, payload, manifest.artifact.signature):
            raise VersionRefused(f"{stream} v{version}: the artifact's signature does not match (another key?)")
        try:
            return DeployedVersion.assemble(manifest, ModelBundle.from_verified_bytes(payload))
        except Exception as exc:  # a signed artifact from another build: any unpickling error is a refusal
            raise VersionRefused(
                f"{stream} v{version}: its artifact does not load in this build ({type(exc).__name__}: {exc}); "
                f"retrain with `fleetwatch train --stream {stream}`"
            ) from exc

    def load_deployed(self, stream: str) -> DeployedVersion | None:
        version = self.deployed_version(stream)
        return None if version is None else self.load(stream, version)


def _manifest_problem(stream: str, manifest: Manifest) -> str | None:
    """Why this build cannot serve the manifest's version for `stream`, read before anything is unpickled."""
    if manifest.stream != stream:
        return f"the manifest is for stream {manifest.stream!r}"
    if stream not in CATALOG:
        return f"this build has no stream {stream!r} (known: {', '.join(sorted(CATALOG))})"
    return CATALOG[stream].feature_spec_mismatch(manifest.feature_spec_version, manifest.feature_names)


def draft_manifest(stream: str, parent: int | None, **fields: Any) -> Manifest:
    """A manifest before publication: version, time and artifact are filled in by `publish`."""
    return Manifest(
        stream=stream,
        version=0,
        parent_version=parent,
        created_at="",
        artifact=ArtifactRef(version=0, sha256="", signature="", size=0),
        **fields,
    )


def open_registry(settings: FleetwatchSettings, client: RedisClient | None = None) -> ModelRegistry:
    """The registry the settings describe: Redis index, the configured artifact store, the signing key."""
    client = client or connect_redis(settings.redis_url)
    store: ArtifactStore = (
        RedisArtifactStore(client, settings.redis_prefix)
        if settings.artifact_store == "redis"
        else FileArtifactStore(settings.artifact_dir)
    )
    return ModelRegistry(client, store, signing_key(settings), settings.redis_prefix)
