"""A single-node Apache Kafka 4 broker in KRaft mode (broker and controller in one JVM) on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from shared.errors import FleetwatchError
from shared.local_infra.kafka_jars import resolve_kafka_jars
from shared.local_infra.processes import log_tail, pid_is_alive, spawn_detached, stop_process

LOG4J_CONFIG = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = file
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


class KafkaBrokerError(FleetwatchError):
    pass


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener for clients, beside the PLAINTEXT one (which stays for the controller and
    readiness checks): SCRAM-SHA-512 users, created when the storage is formatted, and the broker's
    certificate chain and unencrypted PKCS#8 key as PEM files (Kafka reads them inline, no keystore)."""

    port: int
    users: Mapping[str, str]  # name -> password
    certificate_chain: Path
    private_key: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def server_properties(self) -> dict[str, str]:
        prefix = "listener.name.sasl_ssl."
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"{prefix}scram-sha-512.sasl.jaas.config": f"{SCRAM_LOGIN_MODULE} required;",
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.certificate.chain": self.certificate_chain.read_text(),
            f"{prefix}ssl.keystore.key": self.private_key.read_text(),
        }

    def scram_arguments(self) -> list[str]:
        return [f"--add-scram=SCRAM-SHA-512=[name={name},password={password}]" for name, password in self.users.items()]


@dataclass
class KafkaBroker:
    """Owns one broker's data folder, configuration and process."""

    data_dir: Path
    port: int
    controller_port: int
    heap_mb: int = 512
    pid: int | None = None
    sasl_ssl: SaslSslListener | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _server_properties(self) -> str:
        client_listeners = {"PLAINTEXT": self.port} | ({"SASL_SSL": self.sasl_ssl.port} if self.sasl_ssl else {})
        advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in client_listeners.items())
        protocols = ",".join(f"{name}:{name}" for name in client_listeners)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": f"{protocols},CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "num.partitions": "3",
            # One node: internal topics must not ask for replicas that cannot exist.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "24",
            **(self.sasl_ssl.server_properties() if self.sasl_ssl else {}),
        }
        # One line per key: the line breaks inside PEM values are written as \n, which Java reads back.
        return "".join(f"{key}={value.strip()}".replace("\n", "\\n") + "\n" for key, value in settings.items())

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaBrokerError("Java 17+ ('java') is needed for the Kafka broker; run bin/setup")
        jars = resolve_kafka_jars()
        return [
            java,
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{jars}/*",
            main_class,
            *args,
        ]

    def _format_storage(self, properties: Path) -> None:
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        command = self._java_command(
            "kafka.tools.StorageTool", "format", "-t", uuid.uuid4().hex[:22], "-c", str(properties),
            *(self.sasl_ssl.scram_arguments() if self.sasl_ssl else []),
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KafkaBrokerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the broker and return once it answers metadata requests; raise with its log otherwise."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = self.data_dir / "server.properties"
        properties.write_text(self._server_properties())
        (self.data_dir / "log4j2.properties").write_text(LOG4J_CONFIG.format(log_file=self.log_file))
        self._format_storage(properties)
        self.pid = spawn_detached(
            self._java_command("kafka.Kafka", str(properties)), self.data_dir / "stdout.log", self.data_dir
        )
        self._wait_until_serving(timeout_s)

    def _wait_until_serving(self, timeout_s: float) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid is None or not pid_is_alive(self.pid):
                raise KafkaBrokerError(f"the Kafka broker exited during start-up:\n{self._logs()}")
            try:
                metadata = admin.list_topics(timeout=1.0)
            except KafkaException:
                continue
            if metadata.brokers:
                return
        self.stop()
        raise KafkaBrokerError(f"the Kafka broker did not serve within {timeout_s:.0f}s:\n{self._logs()}")

    def _logs(self) -> str:
        return f"{log_tail(self.data_dir / 'stdout.log')}\n{log_tail(self.log_file)}"

    def is_running(self) -> bool:
        return self.pid is not None and pid_is_alive(self.pid)

    def stop(self) -> None:
        if self.pid is not None:
            stop_process(self.pid, timeout_s=20.0)
            self.pid = None
