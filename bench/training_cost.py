"""Scenario 5, training cost: trainer wall time and peak memory per detector and in total, per size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.context import BenchContext
from bench.peers import REPOSITORY


def run_training_cost(ctx: BenchContext) -> dict[str, Any]:
    sizes = ctx.size.training_rows
    task = ctx.progress.add_task("training", total=len(sizes))
    runs = []
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    for rows in sizes:
        ctx.progress.update(task, description=f"training: {rows:,} rows")
        done = subprocess.run(
            [sys.executable, "-m", "bench.training_probe", str(rows)],
            env={**os.environ, "PYTHONPATH": python_path},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if done.returncode != 0:
            runs.append({"rows": rows, "failure": done.stderr.strip().splitlines()[-5:]})
        else:
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        ctx.progress.advance(task)
    ctx.progress.remove_task(task)
    return {
        "parameters": {
            "rows": list(sizes),
            "detectors": [d.name for d in ctx.trained.draft.detectors],
            "split": "time-ordered: 70 % train, 15 % calibrate, 15 % evaluate (labelled)",
            "process": "a fresh interpreter per size; total includes the trainer's parallel fit processes",
        },
        "runs": runs,
    }
