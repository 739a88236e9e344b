"""The Kafka broker's runtime jars, resolved from Maven Central through the pinned pom beside this file.

Maven verifies every artifact's checksum (`--strict-checksums`); the jars land in the project's
cache folder so that `dev down --purge` does not force a new download.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from shared.config import cache_dir
from shared.errors import FleetwatchError

POM = Path(__file__).with_name("kafka-pom.xml")
BROKER_JAR_PREFIX = "kafka_2.13-"


class KafkaJarsError(FleetwatchError):
    pass


def jars_dir() -> Path:
    return cache_dir() / "kafka-libs"


def resolve_kafka_jars() -> Path:
    """Return the folder of broker jars, resolving them with Maven when they are not there yet."""
    target = jars_dir()
    marker = target / ".resolved"
    if marker.exists() and marker.read_text() == POM.read_text():
        return target
    if shutil.which("mvn") is None:
        raise KafkaJarsError("Maven ('mvn') is needed to resolve the Kafka broker's jars; run bin/setup")
    if target.exists():
        shutil.rmtree(target)
    command = [
        "mvn",
        "--batch-mode",
        "--quiet",
        "--strict-checksums",
        "-f",
        str(POM),
        f"-Dmaven.repo.local={cache_dir() / 'm2'}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={target}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(target.glob(f"{BROKER_JAR_PREFIX}*.jar")):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise KafkaJarsError(f"Maven could not resolve the Kafka jars (exit {result.returncode}):\n{tail}")
    marker.write_text(POM.read_text())
    return target


def kafka_version(jars: Path) -> str:
    broker_jar = next(jars.glob(f"{BROKER_JAR_PREFIX}*.jar"))
    return broker_jar.name.removeprefix(BROKER_JAR_PREFIX).removesuffix(".jar")
