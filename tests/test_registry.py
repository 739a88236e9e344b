"""The signed registry on a real Redis: bit-for-bit round trips, refusals, promote/rollback with notices."""

from __future__ import annotations

import dataclasses
import importlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import joblib
import msgspec
import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from shared.artifact_store import FileArtifactStore, RedisArtifactStore
from shared.errors import FleetwatchError
from shared.model_version import DeployedVersion, Manifest
from shared.registry import ModelRegistry, Notice, RefusedVersion, VersionRefused
from shared.training import TrainingResult
from tests.small_models import train_small
from workers.version_watcher import VersionWatcher

KEY = b"k" * 32


@pytest.fixture(scope="module")
def trained() -> TrainingResult:
    return train_small(events=4_000, seed=1)


@pytest.fixture(params=["redis", "file"])
def registry(request, redis_client: redis.Redis, unique_name: str, tmp_path: Path) -> ModelRegistry:  # type: ignore[no-untyped-def]
    prefix = f"{unique_name}:"
    store = RedisArtifactStore(redis_client, prefix) if request.param == "redis" else FileArtifactStore(tmp_path)
    return ModelRegistry(redis_client, store, KEY, prefix)


@pytest.fixture
def notices(registry: ModelRegistry, redis_client: redis.Redis) -> Iterator[list[Notice]]:
    received: list[Notice] = []
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(registry.keys.notices)
    pubsub.get_message(timeout=1.0)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                received.append(msgspec.json.decode(message["data"], type=Notice))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield received
    stop.set()
    thread.join()
    pubsub.close()


def wait_for(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_version_round_trips_bit_for_bit(registry: ModelRegistry, trained: TrainingResult) -> None:
    manifest = registry.publish(trained.bundle, trained.draft, deploy=True)
    assert manifest.version == 1 and registry.deployed_version("transactions") == 1
    stored = registry._store.get("transactions", 1)
    assert stored == trained.bundle.to_bytes() and len(stored) == manifest.artifact.size
    loaded = registry.load("transactions", 1)
    assert msgspec.json.encode(loaded.manifest) == msgspec.json.encode(manifest)
    rows = trained.bundle.scaler.transform(trained.raw_features[:200])
    for name, detector in trained.bundle.detectors.items():
        np.testing.assert_array_equal(loaded.bundle.detectors[name].score_samples(rows), detector.score_samples(rows))


def test_versions_are_numbered_per_stream_and_immutable(registry: ModelRegistry, trained: TrainingResult) -> None:
    first = registry.publish(trained.bundle, trained.draft, deploy=False)
    second = registry.publish(trained.bundle, trained.draft, deploy=False)
    other = registry.publish(trained.bundle, msgspec.structs.replace(trained.draft, stream="logs"), deploy=False)
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.version_numbers("transactions") == [1, 2]
    assert registry.deployed_version("transactions") is None


def test_tampered_artifact_is_refused_and_pointer_stays(
    registry: ModelRegistry, trained: TrainingResult, redis_client: redis.Redis, tmp_path: Path
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    registry.publish(trained.bundle, trained.draft, deploy=False)
    payload = bytearray(registry._store.get("transactions", 2))
    payload[len(payload) // 2] ^= 0xFF
    registry._store.put("transactions", 2, bytes(payload))
    with pytest.raises(VersionRefused, match="hash does not match"):
        registry.promote("transactions", 2)
    assert registry.deployed_version("transactions") == 1


def test_a_watcher_loads_a_version_once_its_unreadable_file_store_answers(
    trained: TrainingResult, redis_client: redis.Redis, unique_name: str, tmp_path: Path
) -> None:
    registry = ModelRegistry(redis_client, FileArtifactStore(tmp_path), KEY, f"{unique_name}:")
    registry.publish(trained.bundle, trained.draft, deploy=True)
    artifact = tmp_path / "transactions" / "v1.joblib"
    payload = artifact.read_bytes()
    artifact.unlink()
    artifact.mkdir()  # reading it fails with an I/O error (IsADirectoryError), as an unmounted volume might

    def reloads(result: str) -> float:
        labels = {"stream": "transactions", "result": result}
        return REGISTRY.get_sample_value("fleetwatch_model_reloads_total", labels) or 0.0

    unavailable_before, refused_before = reloads("unavailable"), reloads("refused")
    watcher = VersionWatcher(registry, redis_client, ["transactions"], reconcile_interval_s=0.1)
    watcher.start()
    try:
        wait_for(lambda: reloads("unavailable") >= unavailable_before + 2)
        assert reloads("unavailable") >= unavailable_before + 2, "tried again at each reconciliation"
        assert watcher.take_staged("transactions") is None
        artifact.rmdir()
        artifact.write_bytes(payload)
        staged: list[int] = []

        def loaded() -> bool:
            version = watcher.take_staged("transactions")
            staged.extend([] if version is None else [version.version])
            return bool(staged)

        wait_for(loaded)
        assert staged == [1], "loaded once the store answered, with the pointer unmoved"
        assert reloads("refused") == refused_before
    finally:
        watcher.stop()


def test_tampered_manifest_is_refused(
    registry: ModelRegistry, trained: TrainingResult, redis_client: redis.Redis
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    key = registry.keys.manifest("transactions", 1)
    body = redis_client.hget(key, "body")
    assert isinstance(body, bytes)
    redis_client.hset(key, "body", body.replace(b'"alerting"', b'"shadow"', 1))
    with pytest.raises(VersionRefused, match="signature does not match"):
        registry.load("transactions", 1)


def test_wrong_key_and_missing_signature_are_refused(
    registry: ModelRegistry, trained: TrainingResult, redis_client: redis.Redis
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    impostor = ModelRegistry(redis_client, registry._store, b"x" * 32, registry.keys.prefix)
    with pytest.raises(VersionRefused, match="signature"):
        impostor.promote("transactions", 1)
    redis_client.hdel(registry.keys.manifest("transactions", 1), "signature")
    with pytest.raises(VersionRefused, match="no signature"):
        registry.load("transactions", 1)
    assert registry.deployed_version("transactions") == 1


def test_missing_version_is_refused_with_reason(registry: ModelRegistry) -> None:
    with pytest.raises(VersionRefused, match="does not exist"):
        registry.promote("transactions", 41)
    assert registry.deployed_version("transactions") is None


def test_promote_and_rollback_move_the_pointer_and_send_notices(
    registry: ModelRegistry, trained: TrainingResult, notices: list[Notice]
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    registry.publish(trained.bundle, trained.draft, deploy=False)
    registry.promote("transactions", 2)
    assert registry.deployed_version("transactions") == 2
    registry.rollback("transactions")
    assert registry.deployed_version("transactions") == 1
    wait_for(lambda: len(notices) >= 5)
    assert [(n.event, n.version) for n in notices] == [
        ("published", 1), ("deployed", 1), ("published", 2), ("deployed", 2), ("deployed", 1)
    ]  # fmt: skip


def test_a_version_that_does_not_verify_is_listed_as_refused_and_rollback_passes_over_it(
    registry: ModelRegistry, trained: TrainingResult, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        registry.publish(trained.bundle, trained.draft, deploy=True)
    redis_client.hdel(registry.keys.manifest("transactions", 2), "signature")
    listed = registry.versions("transactions")
    assert [entry.version for entry in listed] == [1, 2, 3]
    assert listed[1] == RefusedVersion(2, "transactions v2: the manifest has no signature")
    rollback = registry.rollback("transactions")
    assert rollback.version == 1 and registry.deployed_version("transactions") == 1
    assert [refused.version for refused in rollback.skipped] == [2]
    history = [int(v) for v in redis_client.lrange(registry.keys.history("transactions"), 0, -1)]
    assert history == [1], "the version passed over leaves the history too: a later rollback does not go forward"


def test_a_rollback_moves_the_pointer_only_from_the_version_it_started_from(
    registry: ModelRegistry, trained: TrainingResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(2):
        registry.publish(trained.bundle, trained.draft, deploy=True)
    with pytest.raises(FleetwatchError, match=r"deploys v2, not v1: nothing rolled back"):
        registry.rollback("transactions", from_version=1)
    load = registry.load

    def load_while_a_trainer_deploys(stream: str, version: int) -> DeployedVersion:
        loaded = load(stream, version)
        registry.publish(trained.bundle, trained.draft, deploy=True)  # v3, while the rollback loads v1
        return loaded

    monkeypatch.setattr(registry, "load", load_while_a_trainer_deploys)
    with pytest.raises(FleetwatchError, match=r"moved from v2 during the rollback; nothing rolled back"):
        registry.rollback("transactions")
    assert registry.deployed_version("transactions") == 3, "the trainer's deploy stays"


def test_after_a_key_rotation_rollback_is_refused_naming_the_versions_and_the_pointer_stays(
    registry: ModelRegistry, trained: TrainingResult, redis_client: redis.Redis
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    rotated = ModelRegistry(redis_client, registry._store, b"r" * 32, registry.keys.prefix)
    rotated.publish(trained.bundle, trained.draft, deploy=True)
    assert [type(entry) for entry in rotated.versions("transactions")] == [RefusedVersion, Manifest]
    with pytest.raises(VersionRefused, match=r"no earlier deployed version loads; the pointer stays at v2: .* v1: "):
        rotated.rollback("transactions")
    assert rotated.deployed_version("transactions") == 2


def test_a_candidate_deploys_only_over_the_version_it_was_compared_with(
    registry: ModelRegistry, trained: TrainingResult, notices: list[Notice]
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    stale, deployed = registry.publish_over(trained.bundle, trained.draft, compared_with=None)
    assert not deployed and registry.deployed_version("transactions") == 1
    assert registry.manifest("transactions", 2) == stale and "moved away from no version" in stale.note
    current, deployed = registry.publish_over(trained.bundle, trained.draft, compared_with=1)
    assert deployed and registry.deployed_version("transactions") == 3 and current.note == trained.draft.note
    wait_for(lambda: len(notices) >= 5)
    assert [(n.event, n.version) for n in notices] == [
        ("published", 1), ("deployed", 1), ("published", 2), ("published", 3), ("deployed", 3)
    ]  # fmt: skip


def test_threshold_change_is_a_new_version_on_the_same_artifact(
    registry: ModelRegistry, trained: TrainingResult, notices: list[Notice]
) -> None:
    registry.publish(trained.bundle, trained.draft, deploy=True)
    derived = registry.derive_with_thresholds("transactions", 1, {"iforest": "quantile"})
    assert derived.version == 2 and derived.parent_version == 1 and derived.artifact.version == 1
    assert registry.deployed_version("transactions") == 2
    loaded = registry.load("transactions", 2)
    expected = derived.detector("iforest").active_offset()
    assert (
        loaded.bundle.detectors["iforest"].offset_
        == expected
        != registry.load("transactions", 1).bundle.detectors["iforest"].offset_
    )
    wait_for(lambda: ("deployed", 2) in [(n.event, n.version) for n in notices])
    with pytest.raises(ValueError, match="not a valid ThresholdMethod"):
        registry.derive_with_thresholds("transactions", 2, {"iforest": "vibes"})


def test_manifest_records_what_a_person_needs(trained: TrainingResult) -> None:
    draft: Manifest = trained.draft
    assert [d.name for d in draft.detectors] == ["iforest", "robust_z"]
    entry = draft.detector("iforest")
    assert set(entry.thresholds["offsets"]) == {
        "mean_k_std", "min", "max", "moving_average", "quantile", "target_fpr", "fleet_budget"
    }  # fmt: skip
    assert entry.active_method == "fleet_budget" and entry.params["n_estimators"] == 30
    assert draft.training.rows_train > draft.training.rows_calibration > 0
    assert draft.evaluation is not None and draft.evaluation["weakest_detector"] in {"iforest", "robust_z"}


class _UnloadableBundle:
    """Pickles fine here; unpickling it in a worker fails as a bundle from another build would."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (importlib.import_module, ("shared.no_such_module_from_an_older_build",))


def test_an_artifact_that_does_not_unpickle_is_refused_with_how_to_retrain(
    registry: ModelRegistry, trained: TrainingResult
) -> None:
    bundle = dataclasses.replace(trained.bundle)
    bundle.to_bytes = lambda: joblib_bytes(_UnloadableBundle())  # type: ignore[method-assign]
    manifest = registry.publish(bundle, trained.draft, deploy=True)
    with pytest.raises(VersionRefused, match=r"does not load in this build \(ModuleNotFoundError.*retrain with"):
        registry.load("transactions", manifest.version)


def test_another_feature_spec_is_refused_before_anything_is_unpickled(
    registry: ModelRegistry, trained: TrainingResult
) -> None:
    bundle = dataclasses.replace(trained.bundle)
    bundle.to_bytes = lambda: b"not a pickle: reading it would fail differently"  # type: ignore[method-assign]
    draft = msgspec.structs.replace(trained.draft, feature_spec_version=1, feature_names=["amount"])
    manifest = registry.publish(bundle, draft, deploy=True)
    with pytest.raises(VersionRefused, match=r"trained on feature spec 1 \(1 features\); this build computes spec 3"):
        registry.load("transactions", manifest.version)
    other_stream = msgspec.structs.replace(trained.draft, stream="weather")
    weather = registry.publish(trained.bundle, other_stream, deploy=True)
    with pytest.raises(VersionRefused, match="this build has no stream 'weather'"):
        registry.load("weather", weather.version)


def joblib_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()
