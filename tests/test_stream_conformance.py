"""Every stream of the catalog, and one defined only in the tests, against the Stream interface.

Decoding never raises; online features (any batching, state through the stored bytes) equal offline
ones; state survives the Redis store and a replay; a version trains, publishes, loads and scores. The
test-only stream (`tests/toy_stream.py`) then runs through a real trainer and a real worker, loaded as a
plug-in by configuration: adding a stream needs no edit of `workers/` or the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from shared.artifact_store import RedisArtifactStore
from shared.config import StreamSettings, topic_environment
from shared.kafka_client import KafkaConnection
from shared.output_records import decode_output
from shared.pipeline import OfflineBatch, Stream
from shared.registry import ModelRegistry
from shared.scoring import score_batch
from shared.state_store import EntityStateStore
from shared.streams.catalog import CATALOG, load_plugins
from shared.training import TrainingData, train_round
from tests.fleet import FLEETWATCH, event_ids, open_fleet
from tests.online_batches import online
from tests.toy_stream import METERS

load_plugins(["tests.toy_stream:METERS"])  # as a worker does from its `stream_plugins` setting
STREAMS: list[Stream[Any, Any]] = list(CATALOG.values())
assert METERS in STREAMS
REPOSITORY = Path(__file__).resolve().parent.parent
PLUGIN_ENV = {"FLEETWATCH_STREAM_PLUGINS": '["tests.toy_stream:METERS"]', "PYTHONPATH": str(REPOSITORY)}

by_stream = pytest.mark.parametrize("stream", STREAMS, ids=lambda stream: stream.name)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)


def mutated(valid: bytes, draw_key: str, value: Any) -> bytes:
    """A valid event with one field replaced, removed (value Ellipsis) or added."""
    record = msgspec.json.decode(valid)
    if value is Ellipsis:
        record.pop(draw_key, None)
    else:
        record[draw_key] = value
    return msgspec.json.encode(record)


@by_stream
@given(data=st.data())
def test_decoding_never_raises_and_accounts_for_every_record(stream: Stream[Any, Any], data: st.DataObject) -> None:
    valid = stream.synthetic(events=5, entities=2, anomaly_rate=0.0, seed=1).payloads
    fields = list(msgspec.json.decode(valid[0]))
    record = st.one_of(
        st.binary(max_size=64),
        st.none(),
        json_values.map(msgspec.json.encode),
        st.builds(mutated, st.sampled_from(valid), st.sampled_from(fields), json_values | st.just(Ellipsis)),
        st.sampled_from(valid),
        st.just(b"x" * (65 * 1024)),
    )
    payloads = data.draw(st.lists(record, max_size=12))
    batch = stream.decode(payloads)
    assert len(batch.events) + len(batch.errors) == len(payloads)
    assert sorted([*batch.positions, *(e.index for e in batch.errors)]) == list(range(len(payloads)))
    for error in batch.errors:
        assert error.reason and error.raw == (payloads[error.index] or b"")
    assert len(stream.columns(batch.events)) == len(batch.events)


def learned_offline(stream: Stream[Any, Any], payloads: list[bytes]) -> tuple[Stream[Any, Any], OfflineBatch[Any]]:
    """The stream as training leaves it (what it learns from this history), and the history featurized by it.

    It learns from the decoded history in time order, as a training round does: a stream may featurize only
    once it learned (the sensor stream needs its sensors' names)."""
    columns = stream.columns(stream.decode(payloads).events)
    learned = stream.learn(columns.take(np.argsort(columns.event_time_s, kind="stable")))
    return learned, learned.offline(payloads)


@by_stream
@given(sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=8))
def test_online_features_equal_offline_features_for_any_batching(stream: Stream[Any, Any], sizes: list[int]) -> None:
    stream, offline = learned_offline(
        stream, stream.synthetic(events=1_200, entities=60, anomaly_rate=0.02, seed=5).payloads
    )
    assert offline.raw_features.shape == (len(offline.columns), len(stream.feature_spec.names))
    np.testing.assert_allclose(online(stream, offline.columns, sizes), offline.raw_features, rtol=1e-9, atol=1e-9)


@by_stream
def test_a_batch_without_valid_events_featurizes_to_no_rows(stream: Stream[Any, Any]) -> None:
    # A Spark partition without rows, a worker batch of malformed records only: no rows, every column.
    stream, _ = learned_offline(stream, stream.synthetic(events=200, entities=5, anomaly_rate=0.0, seed=3).payloads)
    width = len(stream.feature_spec.names)
    assert stream.offline([]).raw_features.shape == (0, width)
    malformed = stream.offline([b"{not json", None])
    assert malformed.raw_features.shape == (0, width) and len(malformed.errors) == 2


@by_stream
def test_state_survives_the_store_and_a_replayed_batch_counts_once(
    stream: Stream[Any, Any], redis_client: redis.Redis, unique_name: str
) -> None:
    stream, offline = learned_offline(
        stream, stream.synthetic(events=600, entities=30, anomaly_rate=0.02, seed=9).payloads
    )
    assert len(offline.columns) == 600
    store = EntityStateStore(redis_client, f"{unique_name}:", stream)
    # One partition, offsets in time order, as a worker reads a topic keyed by entity.
    batches = [np.arange(0, 250), np.arange(250, 600)]
    partitions = np.zeros(len(offline.columns), dtype=np.int64)
    got = [store.features(offline.columns.take(rows), partitions[rows], rows) for rows in batches]
    np.testing.assert_allclose(np.vstack(got), offline.raw_features, rtol=1e-9, atol=1e-9)
    # The second batch again (its transaction aborted): it starts from the snapshot, not from its own state.
    replayed = store.features(offline.columns.take(batches[1]), partitions[batches[1]], batches[1])
    np.testing.assert_allclose(replayed, offline.raw_features[batches[1]], rtol=1e-9, atol=1e-9)


@by_stream
def test_a_version_trains_publishes_loads_and_scores(
    stream: Stream[Any, Any], redis_client: redis.Redis, unique_name: str
) -> None:
    generated = stream.synthetic(events=3_000, entities=150, anomaly_rate=0.02, seed=3)
    stream, offline = learned_offline(stream, generated.payloads)
    labels = generated.labels()
    is_anomaly = np.array([labels[event_id][0] for event_id in offline.columns.event_id.tolist()])
    settings = StreamSettings(fleet_fpr_budget=0.01, shadow_floor_auc=0.0).completed(stream)
    result = train_round(TrainingData(offline.columns, is_anomaly, "test"), settings, stream, None)
    assert result.bundle.stream.fingerprint == stream.learn(offline.columns).fingerprint
    assert result.draft.feature_names == list(stream.feature_spec.names)
    registry = ModelRegistry(redis_client, RedisArtifactStore(redis_client, unique_name), b"k" * 16, unique_name)
    manifest = registry.publish(result.bundle, result.draft, deploy=True)
    loaded = registry.load_deployed(stream.name)
    assert loaded is not None and loaded.version == manifest.version and loaded.manifest.stream == stream.name
    scored = score_batch(loaded, offline.raw_features)
    assert scored.scores.shape == (len(offline.columns), len(settings.detectors))
    assert 0 < scored.alert.sum() < len(offline.columns)


def test_a_stream_defined_in_the_tests_runs_through_trainer_and_worker(
    kafka: KafkaConnection, redis_server: Any, unique_name: str, tmp_path: Path
) -> None:
    generated = METERS.synthetic(events=2_000, entities=40, anomaly_rate=0.02, seed=17)
    history = tmp_path / "meters.jsonl"
    history.write_bytes(b"\n".join(generated.payloads[:1_500]) + b"\n")
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        plugin = {
            **PLUGIN_ENV,
            "FLEETWATCH_WORKER__STREAMS": '["meters"]',
            "FLEETWATCH_STREAMS": json.dumps({"meters": {"fleet_fpr_budget": 0.01}}),
            **topic_environment({"input": fleet.topics["input"], "summary": fleet.topics["summary"]}, "meters"),
        }
        fleet.env.update(plugin)
        trained = subprocess.run(
            [FLEETWATCH, "train", "--stream", "meters", str(history)],
            env=fleet.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        assert fleet.registry.deployed_version("meters") == 1
        fleet.start_worker()
        scored = generated.payloads[1_500:]
        fleet.produce([*scored, b"{not json"], [*generated.keys[1_500:], "bad"])
        outputs = fleet.wait_for_outputs(len(scored) + 1)
    ids = event_ids(outputs["alerts"]) + event_ids(outputs["summary"])
    assert sorted(ids) == sorted(generated.event_id[1_500:].tolist()), "one output per reading, none twice"
    assert len(outputs["deadletter"]) == 1 and outputs["deadletter"][0].value() == b"{not json"
    records = [decode_output(r.value()) for r in outputs["alerts"] + outputs["summary"]]
    assert {(r.stream, r.model_version) for r in records} == {("meters", 1)}
    spikes = set(generated.event_id[1_500:][generated.is_anomaly[1_500:]].tolist())
    assert spikes & set(event_ids(outputs["alerts"])), "the injected spikes are among the alerts"
    assert os.environ.get("FLEETWATCH_STREAM_PLUGINS") is None  # the plug-in came from this test's config only
