"""The scorer's contenders as processes of their own: passthrough, per-record baseline, Quix Streams, faust, Bytewax.

Each contender is a small app module in this package with a `main()` that takes a `PeerConfig` as
JSON on the command line, so it gets a fresh interpreter like the worker does, and can be sampled
(memory, CPU) or profiled from outside. Peers load the same signed model version from the same
registry as the scorer, and score with the project's own functions: only the streaming around the
scoring differs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, Producer

from bench.child_process import ChildProcess
from shared.config import FleetwatchSettings
from shared.contracts import DecodeError
from shared.entity_state import EntityStates
from shared.model_version import DeployedVersion
from shared.output_records import OutputRecord, OutputTopics, ScoredEvents, Source, dead_letter, scored_records
from shared.registry import open_registry
from shared.scoring import score_batch
from shared.streams.transactions.contract import Transaction, decode_transactions
from shared.streams.transactions.features import TransactionColumns, advance_profiles
from shared.streams.transactions.profiles import PROFILE_LAYOUT

REPOSITORY = Path(__file__).resolve().parent.parent


class PeerConfig(msgspec.Struct, kw_only=True):
    bootstrap: str
    input_topic: str
    alerts_topic: str
    summary_topic: str
    deadletter_topic: str
    group_id: str
    batch_size: int
    batch_timeout_s: float
    exactly_once: bool
    redis_url: str
    redis_prefix: str
    registry_key: str
    state_dir: str
    max_seconds: float

    @property
    def output_topics(self) -> list[str]:
        return [self.alerts_topic, self.summary_topic, self.deadletter_topic]


def read_config() -> PeerConfig:
    """The config an app was started with (its one argument)."""
    return msgspec.json.decode(sys.argv[1], type=PeerConfig)


def deployed_version(config: PeerConfig) -> DeployedVersion:
    """The deployed version from the registry, verified exactly as a worker does."""
    settings = FleetwatchSettings(
        redis_url=config.redis_url,
        redis_prefix=config.redis_prefix,
        registry_key=config.registry_key,
    )
    version = open_registry(settings).load_deployed("transactions")
    if version is None:
        raise RuntimeError("no deployed version to score with")
    return version


def score_events(
    version: DeployedVersion,
    config: PeerConfig,
    events: list[Transaction],
    payloads: list[bytes],
    keys: list[bytes | None],
    sources: list[Source],
    profiles: EntityStates,
) -> tuple[list[OutputRecord], EntityStates]:
    """Features from `profiles`, every detector's score, one output record per event: the scorer's steps."""
    columns = TransactionColumns.from_events(events)
    raw, after = advance_profiles(profiles, columns)
    scored = score_batch(version, raw)
    outputs = scored_records(
        ScoredEvents(version, scored, raw, payloads, keys, sources, columns.entity.tolist()),
        OutputTopics(config.alerts_topic, config.summary_topic, config.deadletter_topic),
    )
    return outputs, after


def score_batch_of_messages(
    version: DeployedVersion,
    config: PeerConfig,
    payloads: list[bytes | None],
    keys: list[bytes | None],
    sources: list[Source],
    stored_profile: Callable[[str], bytes | None],
) -> tuple[list[OutputRecord], EntityStates | None]:
    """A batching peer's step: decode, then score the valid events from their users' stored profiles (looked
    up by `stored_profile`); the outputs (dead letters first) and the profiles after the batch (None: none)."""
    decoded = decode_transactions(payloads)
    records = dead_letters(config, decoded.errors, keys, sources)
    if not decoded.events:
        return records, None
    users = sorted({event.user_id for event in decoded.events})
    at = decoded.positions
    scored, after = score_events(
        version,
        config,
        decoded.events,
        [payloads[i] or b"" for i in at],  # a decoded event had a value
        [keys[i] for i in at],
        [sources[i] for i in at],
        stored_profiles(users, [stored_profile(user) for user in users]),
    )
    return records + scored, after


def stored_profiles(users: list[str], blobs: list[bytes | None]) -> EntityStates:
    """The peers' own profile stores hold the same fixed-size records as the worker's."""
    return EntityStates.from_blobs(PROFILE_LAYOUT, users, blobs)


def dead_letters(
    config: PeerConfig, errors: list[DecodeError], keys: list[bytes | None], sources: list[Source]
) -> list[OutputRecord]:
    topic = config.deadletter_topic
    return [dead_letter(error, keys[error.index], sources[error.index], "transactions", topic) for error in errors]


def start_peer(module: str, config: PeerConfig, log_file: Path, extra_args: tuple[str, ...] = ()) -> ChildProcess:
    """`python -m bench.<module> CONFIG_JSON`, with the repository importable (bench is not installed)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", f"bench.{module}", msgspec.json.encode(config).decode(), *extra_args]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, env={**os.environ, "PYTHONPATH": python_path}, stdout=log, stderr=log, cwd=config.state_dir
        )
    return ChildProcess(process, log_file)


def serve(config: PeerConfig, reader: Consumer, writer: Producer, step: Callable[[], None]) -> None:
    """Subscribe to the input and call `step` until SIGTERM/SIGINT or `max_seconds` (every peer loop is
    bounded in time), then leave the group and flush what is still buffered."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    reader.subscribe([config.input_topic])
    deadline = time.monotonic() + config.max_seconds
    try:
        while not stopping.is_set() and time.monotonic() < deadline:
            step()
    finally:
        reader.close()
        writer.flush(10)
