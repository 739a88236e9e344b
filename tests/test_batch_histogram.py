"""The batch histogram exposes what prometheus-client's own histogram would, observed value by value."""

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from shared.batch_histogram import BatchHistogram
from shared.metrics import LATENCY_BUCKETS


def test_a_batch_observed_at_once_exposes_the_same_series_as_each_value_observed_alone() -> None:
    values = np.random.default_rng(3).exponential(0.2, 5_000)
    values[:4] = LATENCY_BUCKETS[:4]  # values on a bucket's edge count in that bucket (`le`)
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("latency_seconds", "L.", ["stream"], buckets=LATENCY_BUCKETS, registry=one_by_one)
    for value in values.tolist():
        histogram.labels("a").observe(value)
    batch = BatchHistogram("latency_seconds", "L.", ["stream"], LATENCY_BUCKETS, batched)
    batch.observe(("a",), values[:1_000])
    batch.observe(("a",), values[1_000:])
    batch.observe(("b",), values[:0])  # an empty batch adds no series

    def series(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    expected, exposed = series(one_by_one), series(batched)
    assert exposed.keys() == expected.keys()
    for key, value in expected.items():  # counts exactly; the sum up to floating-point summation order
        assert exposed[key] == value if not key[0].endswith("_sum") else abs(exposed[key] - value) < 1e-9
