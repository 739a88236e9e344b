"""Seed 000's straightforward implementation: one record at a time, one `predict` call per model per record.

Poll one message, decode its JSON, build its feature row from the user's in-memory history, scale
it, call `predict` of every detector on that single row, produce one output, let the consumer
auto-commit. Every per-record loop here is the point: it is the baseline the batch design replaces.
"""

from __future__ import annotations

import json

from bench.peers import PeerConfig, deployed_version, read_config, serve, stored_profiles
from shared.kafka_client import KafkaConnection, consumer, producer
from shared.streams.transactions.contract import decode_transactions
from shared.streams.transactions.features import TransactionColumns, advance_profiles


def run(config: PeerConfig) -> None:
    version = deployed_version(config)
    names = version.detector_names
    alerting = dict(zip(names, version.alerting_mask.tolist(), strict=True))
    connection = KafkaConnection(config.bootstrap)
    reader = consumer(connection, config.group_id, **{"enable.auto.commit": True})
    writer = producer(connection)
    profiles: dict[str, bytes] = {}  # user -> profile record

    def step() -> None:
        message = reader.poll(config.batch_timeout_s)
        if message is None or message.error() is not None:
            return
        decoded = decode_transactions([message.value()])
        if not decoded.events:
            writer.produce(config.deadletter_topic, value=message.value(), key=message.key())
            return
        event = decoded.events[0]
        raw, after = advance_profiles(
            stored_profiles([event.user_id], [profiles.get(event.user_id)]),
            TransactionColumns.from_events([event]),
        )
        profiles[event.user_id] = after.blobs()[0]
        row = version.bundle.scaler.transform(raw)
        verdicts = {name: int(version.bundle.detectors[name].predict(row)[0]) for name in names}
        is_alert = any(verdict == -1 and alerting[name] for name, verdict in verdicts.items())
        output = json.dumps({"event": json.loads(message.value() or b"{}"), "verdicts": verdicts}).encode()
        writer.produce(config.alerts_topic if is_alert else config.summary_topic, value=output, key=message.key())
        writer.poll(0)

    serve(config, reader, writer, step)


def main() -> None:
    run(read_config())


if __name__ == "__main__":
    main()
