"""Scenario `deep`: DeepLog's and MS-CRED's training and inference cost on this machine.

Each kind in a fresh interpreter (`bench.deep_probe`): DeepLog as the log stream trains it (its default
entry, on the key features of synthetic log sessions), MS-CRED with its defaults on windows of a synthetic
pump's sensors. The figures: the fit's wall time, peak resident memory (above the interpreter with Keras
and JAX loaded, and in all), the epochs early stopping let it run, and inference on rows it was not trained
on, per 1,000 rows in one call and per batch of the worker's size.
"""

from __future__ import annotations

from typing import Any

from bench.context import BenchContext
from bench.training_cost import run_probe


def deep_cost(rows: dict[str, int], score_rows: int, batch: int, max_epochs: int | None = None) -> dict[str, Any]:
    """Each kind's figures (or its failure) at `rows[kind]` training rows; JSON-safe."""
    runs = {
        kind: run_probe("bench.deep_probe", kind, count, score_rows, batch, max_epochs or 0)
        for kind, count in rows.items()
    }
    return {
        "parameters": {
            "training_rows": rows,
            "score_rows": score_rows,
            "batch_size": batch,
            "max_epochs": max_epochs or "each kind's default",
            "process": "a fresh interpreter per kind; Keras 3 on JAX, CPU",
        },
        "runs": runs,
    }


def run_deep_cost(ctx: BenchContext) -> dict[str, Any]:
    size = ctx.size
    task = ctx.progress.add_task("deep: DeepLog and MS-CRED training and inference", total=None)
    try:
        rows = {"deeplog": size.deeplog_rows, "mscred": size.mscred_rows}
        return deep_cost(rows, size.deep_score_rows, size.deep_batch_rows, size.deep_max_epochs)
    finally:
        ctx.progress.remove_task(task)
