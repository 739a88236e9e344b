"""The same scoring written idiomatically with faust-streaming: an agent that takes micro-batches.

`stream.take_events(batch_size, within=batch_timeout_s)` is faust's batching: each batch is decoded,
featurized and scored at once with the project's functions, like the scorer's. Users' histories
live in a faust Table (in memory, with its changelog topic); outputs are sent with `Topic.send`,
exactly-once through faust's transactional producers.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import faust
from faust.streams import Stream
from faust.types import EventT, SchemaT, StreamT

from bench.peers import PeerConfig, deployed_version, read_config, score_batch_of_messages
from shared.output_records import Source


def build_app(config: PeerConfig) -> faust.App:
    version = deployed_version(config)
    app = faust.App(
        config.group_id,
        broker=f"kafka://{config.bootstrap}",
        processing_guarantee="exactly_once" if config.exactly_once else "at_least_once",
        store="memory://",
        web_enabled=False,
        datadir=str(Path(config.state_dir) / "faust"),
        broker_commit_every=config.batch_size,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=1,
    )
    source = app.topic(config.input_topic, key_serializer="raw", value_serializer="raw")
    outputs = {name: app.topic(name, key_serializer="raw", value_serializer="raw") for name in config.output_topics}
    # The producer partitions the changelog by key: the batch spans keys, so no single event owns the write.
    raw: SchemaT = faust.Schema(key_serializer="raw", value_serializer="raw")
    profiles = app.Table("profiles", schema=raw, key_type=bytes, value_type=bytes, use_partitioner=True)

    @app.agent(source)
    async def score(stream: StreamT) -> None:
        assert isinstance(stream, Stream)  # take_events is on the class, not on faust's StreamT type
        async for batch in stream.take_events(config.batch_size, within=config.batch_timeout_s):
            await _score_batch(batch)

    async def _score_batch(batch: Sequence[EventT]) -> None:
        records, after = score_batch_of_messages(
            version,
            config,
            [event.value for event in batch],
            [event.key for event in batch],
            [Source(e.message.topic, e.message.partition, e.message.offset) for e in batch],
            lambda user: profiles.get(user.encode()),
        )
        if after is not None:
            for user, blob in zip(after.keys.tolist(), after.blobs(), strict=True):
                profiles[user.encode()] = blob
        for record in records:  # faust sends one record per call; it buffers and batches underneath
            await outputs[record.topic].send(key=record.key, value=record.value)

    return app


def main() -> None:
    config = read_config()
    app = build_app(config)
    # Bounded: the faust worker stops cleanly on SIGTERM, so the time limit sends one to this process.
    limit = threading.Timer(config.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    limit.daemon = True
    limit.start()
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
