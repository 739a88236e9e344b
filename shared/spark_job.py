"""Where a Spark job runs and how it is cut: the master (local mode by default), the partitions, any Spark setting.

Kept apart from `shared.spark_batch` so that the trainer's request format (`TrainingSource.spark`) needs no
PySpark; only starting a session does (the optional `spark` extra: `pip install 'fleetwatch[spark]'`).

>>> SparkJob().partitions_for(rows=1_000_000, cores=2)
10
>>> SparkJob(partitions=3).partitions_for(rows=1_000_000, cores=2), SparkJob().partitions_for(rows=500, cores=2)
(3, 4)
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING

import msgspec

from shared.errors import FleetwatchError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOCAL_MASTER = "local[2]"

ROWS_PER_PARTITION = 100_000
"""Default partition size: one Python call featurizes and scores a whole partition, so this bounds the
memory of each executor's Python worker (about 1 KiB per event at its peak)."""

SESSION_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",  # hour of day in UTC, as batch mode counts it
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # UTC instants any reader knows, not INT96
    "spark.sql.shuffle.partitions": "8",  # only the report's small group-bys shuffle by it
    "spark.driver.maxResultSize": "0",  # a training sample is collected on purpose; max_rows bounds it
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",
}


class SparkJob(msgspec.Struct, kw_only=True, frozen=True):
    master: str = LOCAL_MASTER
    partitions: int | None = None  # default: one per ROWS_PER_PARTITION rows, at least two per core
    conf: dict[str, str] = msgspec.field(default_factory=dict)

    def partitions_for(self, rows: int, cores: int) -> int:
        if self.partitions is not None:
            return self.partitions
        return max(2 * cores, math.ceil(rows / ROWS_PER_PARTITION))


def spark_session(job: SparkJob, app_name: str = "fleetwatch") -> SparkSession:
    """A session on `job.master` (an existing one in this process is reused, as Spark does)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise FleetwatchError("PySpark is not installed: pip install 'fleetwatch[spark]'") from None
    if job.master.startswith("local"):
        # PySpark starts its Python workers with $PYSPARK_PYTHON (else `python3`), not through spark-submit's
        # settings: in local mode they must run this interpreter, with its packages. A cluster sets its own.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(job.master).appName(app_name)
    for key, value in (SESSION_DEFAULTS | job.conf).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
