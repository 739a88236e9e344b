"""Scenario 5, training cost: trainer wall time and peak memory per detector and in total, per size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.context import BenchContext
from bench.peers import REPOSITORY


def run_probe(module: str, *args: object) -> dict[str, Any]:
    """`python -m module args...` in a fresh interpreter (so one measurement's memory never inflates the next's):
    its last stdout line as JSON, or the tail of its stderr under `failure`."""
    python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", module, *(str(arg) for arg in args)],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        return {"failure": done.stderr.strip().splitlines()[-5:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_training_cost(ctx: BenchContext) -> dict[str, Any]:
    sizes = ctx.size.training_rows
    task = ctx.progress.add_task("training", total=len(sizes))
    runs = []
    for rows in sizes:
        ctx.progress.update(task, description=f"training: {rows:,} rows")
        measured = run_probe("bench.training_probe", rows)
        runs.append({"rows": rows, **measured} if "failure" in measured else measured)
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
