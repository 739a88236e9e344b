"""The same scoring written idiomatically with Quix Streams: a StreamingDataFrame with per-key state.

Quix Streams processes a dataframe one message at a time (it has no batch operator; it batches
produce and commit instead, here every `batch_size` messages or every second, exactly-once). Each
user's history lives in the app's own state store (RocksDB plus a changelog topic), keyed like the
input topic by user id; the output record is chosen per message by a dynamic `to_topic`.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.models import SerializationContext, Serializer

from bench.peers import PeerConfig, dead_letters, deployed_version, read_config, score_events, stored_profiles
from shared.output_records import OutputRecord, Source
from shared.streams.transactions.contract import decode_transactions


class OutputRecordValue(Serializer):
    """Writes the output record's value bytes as they are (they are already JSON)."""

    def __call__(self, value: OutputRecord, ctx: SerializationContext) -> bytes:
        return value.value


def run(config: PeerConfig) -> None:
    version = deployed_version(config)
    app = Application(
        broker_address=config.bootstrap,
        consumer_group=config.group_id,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if config.exactly_once else "at-least-once",
        commit_every=config.batch_size,
        commit_interval=1.0,
        state_dir=Path(config.state_dir) / "quix-state",
        loglevel="WARNING",
    )
    events = app.topic(config.input_topic, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        name: app.topic(name, key_serializer="bytes", value_serializer=OutputRecordValue())
        for name in config.output_topics
    }

    def score_one(value: bytes, key: bytes, _timestamp: int, _headers: Any, state: State) -> OutputRecord:
        context = message_context()
        source = Source(context.topic, context.partition, context.offset)
        decoded = decode_transactions([value])
        if decoded.errors:
            return dead_letters(config, decoded.errors, [key], [source])[0]
        event = decoded.events[0]
        stored = state.get("profile")  # the profile record, hex text: Quix state values are JSON
        start = stored_profiles([event.user_id], [bytes.fromhex(stored) if stored is not None else None])
        records, after = score_events(version, config, decoded.events, [value], [key], [source], start)
        state.set("profile", after.blobs()[0].hex())
        return records[0]

    frame = app.dataframe(events)
    frame = frame.apply(score_one, stateful=True, metadata=True)
    frame.to_topic(lambda record, *_: outputs[record.topic])
    # Bounded: Quix stops cleanly on SIGTERM, so the time limit sends one to this process.
    limit = threading.Timer(config.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    limit.daemon = True
    limit.start()
    app.run()


def main() -> None:
    run(read_config())


if __name__ == "__main__":
    main()
