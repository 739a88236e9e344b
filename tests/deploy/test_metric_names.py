"""The dashboard and the alert rules use only metrics that fleetwatch exposes (shared/metrics.py), and `up`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from types import ModuleType

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from .conftest import ALERT_RULES, DASHBOARD

PROMETHEUS_OWN = {"up"}
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "atan2", "inf", "nan", "start", "end"}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS_AND_RANGES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIERS = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_GRAFANA_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def metric_names_in(query: str) -> set[str]:
    """The metric names a PromQL query selects: identifiers that are not functions, keywords or labels.

    >>> sorted(metric_names_in('sum by (stream) (rate(a_total{x="b_total"}[5m])) / on(stream) group_left up'))
    ['a_total', 'up']
    """
    query = _STRINGS.sub('""', query)
    query = _MATCHERS_AND_RANGES.sub(" ", query)
    query = _LABEL_LISTS.sub(" ", query)
    return {name for name, call in _IDENTIFIERS.findall(query) if not call and name not in KEYWORDS}


def metric_types(families: Iterable[Metric]) -> dict[str, str]:
    """Name -> type of every fleetwatch metric family, named the way PromQL selects it.

    Counters are queried with their `_total` suffix; a histogram's series add _bucket, _sum and _count.
    """
    return {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in families
        if family.name.startswith("fleetwatch_")
    }


def exposed_metric_names() -> dict[str, str]:
    """Name -> type of every fleetwatch metric, read from the collectors registered by shared.metrics."""
    import shared.metrics  # noqa: F401 - registers the collectors in the default registry

    return metric_types(REGISTRY.collect())


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(metric, label) is not PromQL: its metric is the first argument.
            match = _GRAFANA_LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"unexpected variable query {variable['query']}"
            queries.append(match.group(1))
    return queries


def alert_queries(yaml: ModuleType) -> list[str]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def unknown_names(queries: list[str], exposed: dict[str, str]) -> dict[str, str]:
    unknown = {}
    for query in queries:
        for name in metric_names_in(query):
            histogram = HISTOGRAM_SERIES.sub("", name)
            if name in exposed or name in PROMETHEUS_OWN or exposed.get(histogram) == "histogram":
                continue
            unknown[name] = query
    return unknown


def test_the_registry_exposes_the_metrics_the_checks_rely_on() -> None:
    exposed = exposed_metric_names()
    assert exposed["fleetwatch_events_total"] == "counter"
    assert exposed["fleetwatch_event_to_output_latency_seconds"] == "histogram"
    assert exposed["fleetwatch_consumer_lag_records"] == "gauge"


def test_dashboard_uses_only_exposed_metric_names() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    assert unknown_names(queries, exposed_metric_names()) == {}


def test_alert_rules_use_only_exposed_metric_names(yaml: ModuleType) -> None:
    queries = alert_queries(yaml)
    assert queries
    assert unknown_names(queries, exposed_metric_names()) == {}


def test_an_unknown_name_is_caught() -> None:
    exposed = exposed_metric_names()
    assert unknown_names(["rate(fleetwatch_event_total[5m])", "fleetwatch_batch_size_bucket"], exposed) == {
        "fleetwatch_event_total": "rate(fleetwatch_event_total[5m])"
    }
