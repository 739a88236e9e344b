"""Real `fleetwatch summarizer` processes and the scored records they read, for integration tests.

Used by tests/test_summarizer.py (window figures, recovery) and tests/test_secure_kafka.py (SASL/TLS).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from shared.http_endpoints import wait_until_ready
from shared.kafka_client import KafkaConnection, produce_all, read_all
from shared.local_infra.processes import free_port
from shared.output_records import AlertRecord, DetectorVerdict, Source, SummaryRecord
from tests.fleet import FLEETWATCH


@dataclass(frozen=True)
class Scored:
    """One record the workers would have written, and what the windows should make of it."""

    user: str
    at_s: float
    amount: float
    segment: str
    transaction_type: str
    alert: bool

    def encode(self) -> bytes:
        event = msgspec.json.encode(
            {"event_id": f"{self.user}-{self.at_s}", "user_id": self.user, "amount": self.amount,
             "timestamp": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(self.at_s))}Z",
             "segment": self.segment, "transaction_type": self.transaction_type}
        )  # fmt: skip
        source = Source("events", 0, 0)
        if self.alert:
            verdict = DetectorVerdict("iforest", -0.7, -0.5, -1, "alerting")
            return msgspec.json.encode(
                AlertRecord("transactions", 1, "high", 1.0, ["iforest"], [verdict], [], source, "now",
                            msgspec.Raw(event))
            )  # fmt: skip
        scores = {"iforest": 0.1 * (self.amount % 7), "robust_z": 0.3}
        return msgspec.json.encode(SummaryRecord("transactions", 1, scores, source, "now", msgspec.Raw(event)))


@dataclass
class Summarizers:
    kafka: KafkaConnection
    env: dict[str, str]
    topics: dict[str, str]
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**self.env, "FLEETWATCH_SUMMARIZER__METRICS_PORT": str(port)}
        log = self.log_dir / f"summarizer-{len(self.processes) + 1}.log"
        with log.open("wb") as output:  # a file, not a pipe: faust logs enough to fill a pipe and block
            process = subprocess.Popen(
                [FLEETWATCH, "summarizer", "--data-dir", str(self.log_dir / "faust")],
                env=env, stdout=output, stderr=output,
            )  # fmt: skip
        self.processes.append(process)
        assert wait_until_ready(port, lambda: process.poll() is None, timeout_s=90), log.read_text()[-3000:]
        return process, port

    def produce(self, records: list[Scored]) -> None:
        alerts = [r for r in records if r.alert]
        normals = [r for r in records if not r.alert]
        for topic, chosen in ((self.topics["alerts"], alerts), (self.topics["summary"], normals)):
            assert produce_all(self.kafka, topic, [r.user for r in chosen], [r.encode() for r in chosen]) == 0

    def records(self, role: str) -> list[dict[str, Any]]:
        return [msgspec.json.decode(m.value()) for m in read_all(self.kafka, self.topics[role], max_wait_s=10)]

    def wait_for_reports(self, windows: int, timeout_s: float = 90) -> list[dict[str, Any]]:
        """Window reports of the 60 s windows, once `windows` distinct window starts have reported."""
        deadline = time.monotonic() + timeout_s
        while True:
            reports = [r for r in self.records("reports") if r["type"] == "window_summary"]
            if len({r["window_start"] for r in reports}) >= windows or time.monotonic() > deadline:
                return reports
            time.sleep(1.0)
