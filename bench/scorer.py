"""The scorer under test: real `fleetwatch worker` processes, configured through FLEETWATCH_* variables.

Each `ScorerDeployment` has its own Redis namespace (registry and user profiles start empty), its
own output topics and consumer group, so runs never see each other's state. Worker logs (JSON, one
event per line) go to files; the bench reads partition assignments and version swaps from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.child_process import ChildProcess
from bench.environment import BenchStack
from shared.config import FleetwatchSettings, topic_environment
from shared.http_endpoints import scrape_metrics, wait_until_ready
from shared.local_infra.processes import free_port
from shared.registry import ModelRegistry, open_registry
from shared.training import TrainingResult

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
REGISTRY_KEY = "fleetwatch-bench-signing-key-0123456789"
OUTPUT_ROLES = ("alerts", "summary", "deadletter")


def registry_for(stack: BenchStack, prefix: str) -> ModelRegistry:
    """The registry a worker configured with this prefix and the bench's key reads from."""
    settings = FleetwatchSettings(
        redis_url=stack.redis_url,
        redis_prefix=prefix,
        registry_key=REGISTRY_KEY,
        artifact_store="redis",
    )
    return open_registry(settings)


@dataclass
class WorkerProcess(ChildProcess):
    metrics_port: int = 0
    started_at: float = 0.0

    def log_events(self, event: str) -> list[dict]:
        """This worker's log lines for one event name, with `at` as epoch seconds."""
        found = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == event:
                record["at"] = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
                found.append(record)
        return found

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per batch stage so far (the worker's own fleetwatch_batch_stage_seconds)."""
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(scrape_metrics(self.metrics_port)):
            if family.name != "fleetwatch_batch_stage_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    totals[sample.labels["stage"]] = totals.get(sample.labels["stage"], 0.0) + sample.value
        return totals


@dataclass
class ScorerDeployment:
    """One scorer set-up: input topic, output topics, registry namespace, consumer group and workers."""

    stack: BenchStack
    name: str
    input_topic: str
    log_dir: Path
    settings: dict[str, str] = field(default_factory=dict)  # FLEETWATCH_WORKER__* and other overrides
    workers: list[WorkerProcess] = field(default_factory=list)
    stream: str = "transactions"

    def __post_init__(self) -> None:
        self.prefix = self.stack.prefix(self.name)
        self.topics = {role: self.stack.topic(f"{self.name}.{role}") for role in OUTPUT_ROLES}
        self.registry = registry_for(self.stack, self.prefix)

    @property
    def output_topics(self) -> list[str]:
        return list(self.topics.values())

    def publish(self, trained: TrainingResult) -> int:
        """Publish and deploy a version (the same bundle again makes a new version number)."""
        return self.registry.publish(trained.bundle, trained.draft, deploy=True).version

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLEETWATCH_KAFKA_BOOTSTRAP": self.stack.kafka.bootstrap,
            "FLEETWATCH_REDIS_URL": self.stack.redis_url,
            "FLEETWATCH_REDIS_PREFIX": self.prefix,
            "FLEETWATCH_REGISTRY_KEY": REGISTRY_KEY,
            "FLEETWATCH_ARTIFACT_STORE": "redis",
            "FLEETWATCH_LOG_FORMAT": "json",
            "FLEETWATCH_WORKER__GROUP_ID": f"bench-{self.stack.run_id}-{self.name}",
            "FLEETWATCH_WORKER__STREAMS": f'["{self.stream}"]',
            **topic_environment({"input": self.input_topic, **self.topics}, self.stream),
            **self.settings,
        }

    def start_worker(self, wait_ready: bool = True, timeout_s: float = 90.0) -> WorkerProcess:
        port = free_port()
        log_file = self.log_dir / f"worker-{self.name}-{len(self.workers) + 1}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.environment(), "FLEETWATCH_WORKER__METRICS_PORT": str(port)}
        with log_file.open("ab") as log:
            process = subprocess.Popen([FLEETWATCH, "worker"], env=env, stdout=log, stderr=log)
        worker = WorkerProcess(process, log_file, port, time.time())
        self.workers.append(worker)
        if wait_ready:
            self.wait_ready(worker, timeout_s)
        return worker

    def wait_ready(self, worker: WorkerProcess, timeout_s: float) -> None:
        """Ready = the model version is loaded (/readyz answers 200)."""
        if wait_until_ready(worker.metrics_port, worker.alive, timeout_s):
            return
        if not worker.alive():
            raise RuntimeError(f"worker {self.name} exited ({worker.process.returncode}); see {worker.log_file}")
        raise RuntimeError(f"worker {self.name} was not ready within {timeout_s:.0f}s; see {worker.log_file}")

    def wait_assigned(self, partitions: int, timeout_s: float = 60.0) -> float:
        """Wait until the live workers' latest assignments cover `partitions` input partitions; return when."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            owned = self.assignment()
            if sum(len(p) for p in owned.values()) >= partitions and all(owned.values()):
                return time.time()
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: partitions were not assigned within {timeout_s:.0f}s")

    def assignment(self) -> dict[int, set[int]]:
        """Input partitions each live worker (by pid) owns, from its assign/revoke log lines."""
        owned: dict[int, set[int]] = {}
        for worker in self.workers:
            if not worker.alive():
                continue
            events = [(e["at"], "+", e) for e in worker.log_events("partitions assigned")]
            events += [(e["at"], "-", e) for e in worker.log_events("partitions revoked")]
            held: set[int] = set()
            for _, sign, event in sorted(events, key=lambda item: item[0]):
                numbers = {int(p.rsplit("[", 1)[1].rstrip("]")) for p in event.get("partitions", [])}
                held = held | numbers if sign == "+" else held - numbers
            owned[worker.pid] = held
        return owned

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
