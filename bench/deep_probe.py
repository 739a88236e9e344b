"""One deep detector's cost in a fresh interpreter: `python -m bench.deep_probe KIND ROWS SCORE_ROWS BATCH EPOCHS`
prints JSON (EPOCHS 0: the kind's default).

KIND is `deeplog` (the log stream's default entry, on the key features of synthetic log sessions: the stream
learns its templates, then featurizes) or `mscred` (its defaults on windows of the six scaled sensors of a
synthetic pump, as `bench.skab_run` feeds it). Keras and JAX are imported before the baseline, so the peak
above it is the training's own; the fit's wall time, the epochs early stopping let it run, then inference on
SCORE_ROWS rows not trained on: once in one call (per 1,000 rows), and in the worker's batches of BATCH rows
(the median batch). A first scoring call comes before the timed ones: MS-CRED builds its network there.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import psutil
from sklearn.preprocessing import StandardScaler

from bench.probes import ProcessTreeSampler
from bench.skab_run import window_rows
from bench.training_probe import MIB
from shared.detectors.base import Detector
from shared.detectors.deeplog import DeepLogDetector
from shared.detectors.keras_backend import keras_for_training
from shared.detectors.mscred import MSCREDDetector
from shared.streams.logs.sessions import FEATURE_NAMES, KEY_FEATURES
from shared.streams.logs.stream import LOGS
from shared.streams.metrics.synthetic import generate_pumps

MSCRED_SERIES = 6


def deeplog_inputs(rows: int, score_rows: int) -> tuple[Detector, np.ndarray, np.ndarray, dict[str, Any]]:
    """The log stream's DeepLog on the key columns of synthetic sessions: a nearly clean history, then new rows."""
    (entry,) = (entry for entry in LOGS.default_detectors if entry["kind"] == "deeplog")
    generated = LOGS.synthetic(events=rows + score_rows, entities=40, anomaly_rate=0.002, seed=31)
    learned = LOGS.trained_on(generated.payloads[:rows])
    keys = learned.offline(generated.payloads).raw_features[:, [FEATURE_NAMES.index(name) for name in KEY_FEATURES]]
    return DeepLogDetector(**entry["params"]), keys[:rows], keys[rows:], dict(entry["params"])


def mscred_inputs(rows: int, score_rows: int) -> tuple[Detector, np.ndarray, np.ndarray, dict[str, Any]]:
    """MS-CRED's defaults on windows of one synthetic pump's scaled sensors, the earliest `rows` to train."""
    detector = MSCREDDetector(n_series=MSCRED_SERIES, random_state=0)
    pump = generate_pumps(events=rows + score_rows, assets=1, anomaly_rate=0.0, seed=31)
    decode = msgspec.json.Decoder()
    sensors = np.array([list(decode.decode(payload)["values"].values()) for payload in pump.payloads])
    windows = window_rows(StandardScaler().fit(sensors[:rows]).transform(sensors), detector.window_length)
    params = {"n_series": MSCRED_SERIES, "random_state": 0, "window_steps": detector.window_length}
    return detector, windows[:rows], windows[rows:], params


INPUTS: dict[str, Callable[[int, int], tuple[Detector, np.ndarray, np.ndarray, dict[str, Any]]]] = {
    "deeplog": deeplog_inputs,
    "mscred": mscred_inputs,
}


def measure(kind: str, rows: int, score_rows: int, batch: int, max_epochs: int = 0) -> dict[str, Any]:
    keras_for_training(kind)  # imported before the baseline: its own memory is not the training's
    detector, train, score, params = INPUTS[kind](rows, score_rows)
    if max_epochs:
        detector.set_params(epochs=max_epochs)
    baseline = psutil.Process().memory_info().rss
    with ProcessTreeSampler(psutil.Process().pid, interval_s=0.05) as sampler:
        started = time.perf_counter()
        detector.fit(train)
        fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    detector.score_samples(score[:batch])
    first_call = time.perf_counter() - started
    started = time.perf_counter()
    detector.score_samples(score)
    bulk = time.perf_counter() - started
    batches = []
    for start in range(0, len(score) - batch + 1, batch):
        started = time.perf_counter()
        detector.score_samples(score[start : start + batch])
        batches.append(time.perf_counter() - started)
    return {
        "kind": kind,
        "params": params,
        "rows_train": len(train),
        "columns": int(train.shape[1]),
        "training": {
            "seconds": round(fit_seconds, 3),
            "epochs": int(getattr(detector, "n_epochs_")),  # noqa: B009 (both kinds have it; Detector does not)
            "max_epochs": int(detector.get_params()["epochs"]),
            "peak_rss_mib": round(sampler.peak_rss / MIB, 1),
            "peak_rss_above_baseline_mib": round(max(sampler.peak_rss - baseline, 0) / MIB, 1),
            "baseline_rss_mib": round(baseline / MIB, 1),
            "cpu_seconds": round(sampler.cpu_seconds, 1),
        },
        "inference": {
            "rows": len(score),
            "first_call_s": round(first_call, 3),
            "ms_per_1000_rows": round(1000.0 * bulk / len(score) * 1000, 2),
            "batch_rows": batch,
            "batches": len(batches),
            "ms_per_batch_median": round(1000.0 * float(np.median(batches)), 2) if batches else None,
            "ms_per_batch_max": round(1000.0 * max(batches), 2) if batches else None,
        },
    }


def main() -> None:
    kind, rows, score_rows, batch, max_epochs = sys.argv[1], *(int(value) for value in sys.argv[2:6])
    sys.stdout.write(json.dumps(measure(kind, rows, score_rows, batch, max_epochs)) + "\n")


if __name__ == "__main__":
    main()
