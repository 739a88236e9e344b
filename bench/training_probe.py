"""One training-cost measurement in a fresh interpreter: `python -m bench.training_probe ROWS` prints JSON.

A fresh process per size, so one size's memory never inflates the next one's peak. Per detector:
the fit alone (in this process) on the same scaled training rows the trainer uses, with its wall
time and the peak resident memory above what the process held before the fit. Total: a whole
`train_round` (featurize, fit in parallel processes, thresholds, evaluation), with the peak of this
process and its worker processes together.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import psutil
from sklearn.exceptions import ConvergenceWarning

from bench.probes import ProcessTreeSampler
from shared.config import StreamSettings
from shared.detectors import build_detector
from shared.feature_scaler import FeatureScaler
from shared.streams.transactions.stream import TRANSACTIONS
from shared.streams.transactions.synthetic import GeneratorSpec, generate_transactions
from shared.training import TrainingData, time_ordered_split, train_round

MIB = 2**20


def measure(rows: int) -> dict[str, object]:
    settings = StreamSettings().completed(TRANSACTIONS)
    data = generate_transactions(GeneratorSpec(users=max(rows // 10, 10), events=rows, seed=23))
    history = TrainingData(data.transaction_columns(), data.is_anomaly, "bench")
    raw, _ = TRANSACTIONS.advance(TRANSACTIONS.empty_states(), data.transaction_columns())
    train = time_ordered_split(len(raw), labelled=True).train
    scaled = FeatureScaler().fit(raw[train]).transform(raw[train])
    detectors = {}
    for config in settings.detectors:
        detector = build_detector(config.kind, config.params)
        baseline = psutil.Process().memory_info().rss
        with ProcessTreeSampler(psutil.Process().pid, interval_s=0.02) as sampler, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            started = time.perf_counter()
            detector.fit(scaled)
            seconds = time.perf_counter() - started
        detectors[config.name] = {
            "seconds": round(seconds, 3),
            "peak_rss_above_baseline_mib": round(max(sampler.peak_rss - baseline, 0) / MIB, 1),
        }
    del raw, scaled
    baseline = psutil.Process().memory_info().rss
    with ProcessTreeSampler(psutil.Process().pid, interval_s=0.05) as sampler:
        started = time.perf_counter()
        result = train_round(history, settings, TRANSACTIONS, None)
        seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "rows_train": result.draft.training.rows_train,
        "detectors": detectors,
        "total": {
            "seconds": round(seconds, 3),
            "peak_rss_mib": round(sampler.peak_rss / MIB, 1),
            "baseline_rss_mib": round(baseline / MIB, 1),
            "fit_seconds_in_round": {d.name: d.training_seconds for d in result.draft.detectors},
        },
    }


def main() -> None:
    sys.stdout.write(json.dumps(measure(int(sys.argv[1]))) + "\n")


if __name__ == "__main__":
    main()
