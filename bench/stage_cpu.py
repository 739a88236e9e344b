"""CPU time per 1000 events of each stage of a worker's batch, without Kafka: `python -m bench.stage_cpu`.

The same steps as `workers.stream_scorer.StreamScorer` (decode, columns, entity state in a real local
Redis, scoring by the default detector fleet, output records), timed with the process's CPU clock, so
that other load on the machine moves the figures far less than it moves throughput. One BLAS thread
and the long-lived objects frozen out of the collector, as in a worker. Prints one JSON line.
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shared.config import StreamSettings
from shared.local_infra.processes import free_port
from shared.local_infra.redis_server import RedisServer
from shared.model_version import DeployedVersion, ModelBundle
from shared.output_records import OutputTopics, ScoredEvents, Source, scored_records
from shared.redis_connection import connect_redis
from shared.scoring import score_batch
from shared.state_store import EntityStateStore
from shared.streams.catalog import stream_named
from shared.training import TrainingData, train_round

STAGES = ("decode", "columns", "state", "score", "encode")


def measure(stream_name: str = "transactions", events: int = 130_000, train_rows: int = 30_000) -> dict[str, object]:
    stream = stream_named(stream_name)
    generated = stream.synthetic(events=events, entities=events // 13, anomaly_rate=0.01, seed=3)
    stream = stream.trained_on(generated.payloads[:train_rows])  # what it learns first (a metrics stream: sensors)
    history = stream.offline(generated.payloads[:train_rows])
    labels = generated.labels()
    truth = np.array([labels[event_id][0] for event_id in history.columns.event_id.tolist()])
    trained = train_round(
        TrainingData(history.columns, truth, "bench"), StreamSettings().completed(stream), stream, None
    )
    version = DeployedVersion.assemble(trained.draft, ModelBundle.from_verified_bytes(trained.bundle.to_bytes()))
    payloads = generated.payloads[train_rows:]
    server = RedisServer(Path(tempfile.mkdtemp(prefix="stage-cpu-")), free_port(), persistent=False)
    server.start()
    try:
        store = EntityStateStore(connect_redis(server.url), "bench:", stream)
        topics = OutputTopics("alerts", "summary", "deadletter")
        seconds = dict.fromkeys(STAGES, 0.0)
        gc.collect()
        gc.freeze()
        batches = 0
        for start in range(0, len(payloads) - 999, 1000):
            chunk, offsets = payloads[start : start + 1000], np.arange(start, start + 1000)
            began = time.process_time()
            decoded = stream.decode(chunk)
            lap = [began, time.process_time()]
            columns = stream.columns(decoded.events)
            lap.append(time.process_time())
            raw = store.features(columns, np.zeros(len(offsets), dtype=np.int64), offsets)
            lap.append(time.process_time())
            scored = score_batch(version, raw)
            lap.append(time.process_time())
            sources = [Source("in", 0, int(offset)) for offset in offsets]
            entities = columns.entity.tolist()
            scored_records(ScoredEvents(version, scored, raw, chunk, [None] * len(chunk), sources, entities), topics)
            lap.append(time.process_time())
            for name, (a, b) in zip(STAGES, itertools.pairwise(lap), strict=True):
                seconds[name] += b - a
            batches += 1
    finally:
        server.stop()
    per_batch = {name: round(value / batches * 1000, 2) for name, value in seconds.items()}
    return {"stream": stream_name, "batches": batches, **per_batch, "total": round(sum(per_batch.values()), 2)}


if __name__ == "__main__":
    with threadpool_limits(1):
        print(json.dumps(measure(sys.argv[1] if len(sys.argv) > 1 else "transactions")))
