"""Hot reload: follow the registry's deployed pointers and load new versions off the hot path.

Redis pub/sub delivers at most once and drops notices while disconnected, so besides listening the
watcher reconciles with the deployed pointers every `reconcile_interval_s` and after every
reconnect. A version that fails to verify or load is refused and remembered (until the pointer
moves again); the worker keeps scoring with what it has. A store that does not answer (Redis down, a
file store's I/O error) only delays the load to the next reconciliation.
"""

from __future__ import annotations

import threading
import time

import msgspec
import redis

from shared.logs import get_logger
from shared.metrics import DEPLOYED_VERSION, RELOADS
from shared.model_version import DeployedVersion
from shared.redis_connection import RedisClient
from shared.registry import ModelRegistry, Notice

log = get_logger("fleetwatch.reload")


class VersionWatcher:
    def __init__(self, registry: ModelRegistry, client: RedisClient, streams: list[str], reconcile_interval_s: float):
        self._registry = registry
        self._client = client
        self._streams = streams
        self._interval = reconcile_interval_s
        self._lock = threading.Lock()
        self._staged: dict[str, DeployedVersion] = {}
        self._current: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def take_staged(self, stream: str) -> DeployedVersion | None:
        """The newly loaded version for `stream`, once; the caller swaps it in between batches."""
        with self._lock:
            return self._staged.pop(stream, None)

    def mark_serving(self, stream: str, version: DeployedVersion) -> None:
        with self._lock:
            self._current[stream] = version.version
        DEPLOYED_VERSION.labels(stream).set(version.version)
        log.info("serving model version", stream=stream, version=version.version)

    def _run(self) -> None:
        listener = threading.Thread(target=self._listen, name="registry-notices", daemon=True)
        listener.start()
        while not self._stopping.is_set():
            self._reconcile()
            self._wake.wait(self._interval)
            self._wake.clear()

    def _listen(self) -> None:
        """Subscribe to notices; on every (re)connect, wake the reconciler since notices may have been lost."""
        while not self._stopping.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._registry.keys.notices)
                self._wake.set()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    notice = msgspec.json.decode(message["data"], type=Notice)
                    if notice.event == "deployed" and notice.stream in self._streams:
                        self._wake.set()
            except (redis.RedisError, OSError, msgspec.DecodeError) as exc:
                log.warning("registry notices unavailable; reconciling periodically", error=str(exc))
                self._stopping.wait(1.0)
            finally:
                pubsub.close()

    def _reconcile(self) -> None:
        for stream in self._streams:
            try:
                wanted = self._registry.deployed_version(stream)
            except redis.RedisError as exc:
                log.warning(
                    "cannot read the deployed pointer; keeping the loaded version", stream=stream, error=str(exc)
                )
                continue
            with self._lock:
                have = self._staged[stream].version if stream in self._staged else self._current.get(stream)
            if wanted is None or wanted == have or self._refused.get(stream) == wanted:
                continue
            self._load(stream, wanted)

    def _load(self, stream: str, version: int) -> None:
        started = time.perf_counter()
        try:
            loaded = self._registry.load(stream, version)
        except (redis.RedisError, OSError) as exc:  # the store did not answer: nothing is known against the version
            RELOADS.labels(stream, "unavailable").inc()
            log.warning(
                "model version not readable now; trying again at the next reconciliation",
                stream=stream,
                version=version,
                error=str(exc),
            )
            return
        except Exception as exc:  # whatever a version does, this thread must live on
            self._refused[stream] = version
            RELOADS.labels(stream, "refused").inc()
            log.error(
                "model version refused; still serving the loaded one", stream=stream, version=version, reason=str(exc)
            )
            return
        with self._lock:
            self._staged[stream] = loaded
        RELOADS.labels(stream, "loaded").inc()
        log.info(
            "model version loaded", stream=stream, version=version, seconds=round(time.perf_counter() - started, 3)
        )
