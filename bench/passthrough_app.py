"""The throughput ceiling: confluent-kafka's transactional consume → produce loop with no decoding or scoring.

Same batch size, same delivery (one transaction per batch with its offsets), same number of output
topics as the scorer: about 1 % of the records go to the alert topic (offset-based, the scorer's
order of magnitude), the rest to the summary topic, unchanged.
"""

from __future__ import annotations

import os
import uuid

from bench.peers import PeerConfig, read_config, serve
from shared.kafka_client import KafkaConnection, consumer, next_offsets, producer


def run(config: PeerConfig) -> None:
    connection = KafkaConnection(config.bootstrap)
    reader = consumer(connection, config.group_id)
    transactional = {"transactional.id": f"bench-passthrough-{os.getpid()}-{uuid.uuid4().hex[:6]}"}
    writer = producer(connection, **{"linger.ms": 5, **(transactional if config.exactly_once else {})})
    if config.exactly_once:
        writer.init_transactions(30)

    def step() -> None:
        messages = [m for m in reader.consume(config.batch_size, config.batch_timeout_s) if m.error() is None]
        if not messages:
            return
        if config.exactly_once:
            writer.begin_transaction()
        # The loop is the work being measured: one produce call per record is the client's only way.
        for message in messages:
            topic = config.alerts_topic if (message.offset() or 0) % 100 == 0 else config.summary_topic
            writer.produce(topic, value=message.value(), key=message.key())
        offsets = next_offsets(messages)
        if config.exactly_once:
            writer.send_offsets_to_transaction(offsets, reader.consumer_group_metadata(), 30)
            writer.commit_transaction(30)
        else:
            writer.flush(30)
            reader.commit(offsets=offsets, asynchronous=False)

    serve(config, reader, writer, step)


def main() -> None:
    run(read_config())


if __name__ == "__main__":
    main()
