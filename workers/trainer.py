"""The trainer: one training round on demand (`fleetwatch train`) or continuously (`fleetwatch trainer`).

A round samples training data, trains every configured detector, computes thresholds, evaluates
when a labelled set is configured, applies the quality gate and publishes. A failed round publishes
nothing. The service runs a round every `train_interval_s` and whenever a request arrives on a Redis
list (`fleetwatch train --request` pushes one), and serves Prometheus metrics and health over HTTP.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis

from shared import metrics
from shared.config import FleetwatchSettings, StreamSettings
from shared.errors import FleetwatchError
from shared.logs import get_logger
from shared.model_version import Manifest
from shared.redis_connection import connect_redis
from shared.registry import ModelRegistry, VersionRefused, open_registry
from shared.spark_job import SparkJob, spark_session
from shared.streams.catalog import CATALOG, stream_named
from shared.training import GateDecision, TrainingData, TrainingResult, quality_gate, train_round
from shared.training_data import from_files, from_topic

log = get_logger("fleetwatch.trainer")


class TrainingSource(msgspec.Struct, kw_only=True):
    """Where a round reads its events: files, or the stream's input topic when no file is given; with `spark`,
    Parquet files sampled and featurized by Spark (`shared.spark_batch`) instead of in this process."""

    files: list[str] = msgspec.field(default_factory=list)
    topic: str | None = None
    labels: str | None = None
    spark: SparkJob | None = None


@dataclass(frozen=True)
class RoundOutcome:
    manifest: Manifest
    deployed: bool
    gate: GateDecision
    result: TrainingResult


def _read_source(
    settings: FleetwatchSettings, stream: str, stream_settings: StreamSettings, source: TrainingSource
) -> TrainingData:
    labels = Path(source.labels) if source.labels else None
    if source.spark is not None:
        return _read_with_spark(stream, source.spark, source.files, labels, stream_settings)
    if source.files:
        return from_files(
            stream_named(stream), [Path(f) for f in source.files], labels, stream_settings.sample_rate,
            stream_settings.max_rows,
        )  # fmt: skip
    return from_topic(
        stream_named(stream),
        settings.kafka_connection(),
        source.topic or stream_settings.input_topic,
        stream_settings.window_hours,
        stream_settings.sample_rate,
        stream_settings.max_rows,
        labels,
    )


def _read_with_spark(
    stream: str, job: SparkJob, files: list[str], labels: Path | None, stream_settings: StreamSettings
) -> TrainingData:
    """The session stays up for the process's later rounds (a JVM start is seconds); the process's exit ends it."""
    if not files:
        raise FleetwatchError("training with Spark reads Parquet files; name at least one")
    from shared.spark_batch import training_data_with_spark

    return training_data_with_spark(
        spark_session(job, app_name=f"fleetwatch-train-{stream}"), job, stream_named(stream),
        [Path(f) for f in files], labels, stream_settings.sample_rate, stream_settings.max_rows,
    )  # fmt: skip


def run_round(
    settings: FleetwatchSettings,
    registry: ModelRegistry,
    stream: str,
    source: TrainingSource,
    deploy: bool = True,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> RoundOutcome:
    """One training round; raises (publishing nothing) when any step fails."""
    stream_settings = settings.stream_settings(stream)
    started = time.perf_counter()
    on_stage("reading training data")
    data = _read_source(settings, stream, stream_settings, source)
    # The parent, the gate's baseline and the pointer the candidate may replace: the version deployed now.
    deployed_version = registry.deployed_version(stream)
    on_stage(f"training {len(stream_settings.detectors)} detectors on {len(data.columns):,} events")
    result = train_round(data, stream_settings, stream_named(stream), deployed_version)
    on_stage("quality gate")
    try:
        deployed = None if deployed_version is None else registry.load(stream, deployed_version)
    except VersionRefused as exc:
        # E.g. trained on an older feature spec: it cannot score this data, so there is nothing to compare.
        log.warning("the deployed version cannot be compared", stream=stream, reason=str(exc))
        deployed = None
    gate = quality_gate(result, deployed, data.is_anomaly, stream_settings)
    draft = msgspec.structs.replace(result.draft, note=f"gate: {gate.reason}")
    on_stage("publishing")
    manifest, deployed_now = registry.publish_over(result.bundle, draft, deployed_version, deploy and gate.accepted)
    if deploy and gate.accepted and not deployed_now:
        log.warning(
            "the deployed version moved during the round; published without deploying",
            stream=stream,
            version=manifest.version,
            compared_with=deployed_version,
            deployed=registry.deployed_version(stream),
        )
    outcome = "published" if gate.accepted else "refused_by_gate"
    metrics.TRAINING_RUNS.labels(stream, outcome).inc()
    metrics.TRAINING_SECONDS.labels(stream).observe(time.perf_counter() - started)
    log.info(
        "training round done",
        stream=stream,
        version=manifest.version,
        deployed=deployed_now,
        gate=gate.reason,
        rows=len(data.columns),
        seconds=round(time.perf_counter() - started, 1),
    )
    return RoundOutcome(manifest, deployed_now, gate, result)


def request_key(settings: FleetwatchSettings) -> str:
    return f"{settings.redis_prefix}trainer:requests"


class TrainingRequest(msgspec.Struct, kw_only=True):
    stream: str
    source: TrainingSource
    deploy: bool = True  # False: publish without moving the pointer, whatever the gate says


def request_round(settings: FleetwatchSettings, stream: str, source: TrainingSource, deploy: bool = True) -> None:
    """Ask a running trainer service for a round now. The service runs in its own directory, so file paths go
    absolute, resolved here."""
    absolute = msgspec.structs.replace(
        source,
        files=[str(Path(f).resolve()) for f in source.files],
        labels=str(Path(source.labels).resolve()) if source.labels else None,
    )
    request = TrainingRequest(stream=stream, source=absolute, deploy=deploy)
    connect_redis(settings.redis_url).rpush(request_key(settings), msgspec.json.encode(request))


@dataclass(frozen=True)
class RejectedRequest:
    """A request the service drops: `kind` is a metric label (not_json, wrong_shape, unknown_stream)."""

    kind: str
    reason: str
    request: str  # its first 200 characters, for the log


_REQUEST_DECODER = msgspec.json.Decoder(TrainingRequest)


def decode_request(raw: bytes | str, streams: Collection[str]) -> TrainingRequest | RejectedRequest:
    """A request from the Redis list, or why it is refused: anyone can push there, so nothing raises.

    >>> decode_request(b"{not json", ["transactions"]).kind
    'not_json'
    >>> decode_request(b'{"stream": "transactions"}', ["transactions"]).kind
    'wrong_shape'
    >>> decode_request(b'{"stream": "nope", "source": {}}', ["transactions"]).kind
    'unknown_stream'
    """
    text = raw if isinstance(raw, str) else raw.decode(errors="replace")
    try:
        request = _REQUEST_DECODER.decode(text)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: valid JSON, wrong fields
        return RejectedRequest("wrong_shape", str(exc), text[:200])
    except msgspec.DecodeError as exc:
        return RejectedRequest("not_json", str(exc), text[:200])
    if request.stream not in streams:
        reason = f"unknown stream {request.stream!r}; known streams: {', '.join(sorted(streams))}"
        return RejectedRequest("unknown_stream", reason, text[:200])
    return request


def serve(settings: FleetwatchSettings, stream: str, source: TrainingSource, metrics_port: int) -> None:
    """Run rounds on the schedule and on request until SIGTERM/SIGINT."""
    from shared.http_endpoints import start_http_endpoints

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    start_http_endpoints(metrics_port, ready=lambda: not stopping.is_set())
    client = connect_redis(settings.redis_url)
    registry = open_registry(settings, client)
    interval = settings.stream_settings(stream).train_interval_s
    next_run = time.monotonic()
    log.info("trainer started", stream=stream, interval_s=interval, metrics_port=metrics_port)
    while not stopping.is_set():
        wait_s = max(0.0, next_run - time.monotonic())
        request = None
        try:
            popped = client.blpop([request_key(settings)], timeout=min(wait_s, 1.0) or 0.01)
        except redis.RedisError as exc:
            log.warning("redis unavailable; retrying", error=str(exc))
            stopping.wait(1.0)
            continue
        if popped is not None:
            decoded = decode_request(popped[1], CATALOG)  # a stream the config does not name trains with its defaults
            if isinstance(decoded, RejectedRequest):
                metrics.TRAINING_REQUESTS_REJECTED.labels(decoded.kind).inc()
                log.warning(
                    "training request rejected", kind=decoded.kind, reason=decoded.reason, request=decoded.request
                )
                continue
            request = decoded
        elif time.monotonic() < next_run:
            continue
        round_stream, round_source = (request.stream, request.source) if request else (stream, source)
        try:
            run_round(settings, registry, round_stream, round_source, deploy=request.deploy if request else True)
        except (FleetwatchError, redis.RedisError, OSError) as exc:
            metrics.TRAINING_RUNS.labels(round_stream, "failed").inc()
            log.error("training round failed; nothing published", stream=round_stream, error=str(exc))
        except Exception as exc:  # a bug or a library's surprise in one round must not end the service
            metrics.TRAINING_RUNS.labels(round_stream, "crashed").inc()
            log.exception("training round crashed; nothing published", stream=round_stream, error=repr(exc))
        if request is None:
            next_run = time.monotonic() + interval
    log.info("trainer stopped")
