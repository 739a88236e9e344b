"""The alert rules, Prometheus' configuration and the dashboard's queries, checked by promtool."""

from __future__ import annotations

import json

import pytest

from .conftest import ALERT_RULES, DASHBOARD, PROMETHEUS_CONFIG, REPO, Tool

RULE_TESTS = REPO / "tests" / "deploy" / "data" / "alert-rules-test.yml"

# Grafana replaces these before Prometheus sees a query; any valid duration stands in for them.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_alert_rules_are_valid_and_lint_clean(promtool: Tool) -> None:
    promtool.run("check", "rules", "--lint=all", "--lint-fatal", str(ALERT_RULES))


def test_every_alert_fires_when_it_should_and_only_then(promtool: Tool) -> None:
    promtool.run("test", "rules", str(RULE_TESTS))


def test_prometheus_configuration_of_the_compose_stack_is_valid(promtool: Tool) -> None:
    promtool.run("check", "config", "--lint=all", "--lint-fatal", str(PROMETHEUS_CONFIG))


@pytest.mark.parametrize(("title", "query"), dashboard_queries(), ids=[title for title, _ in dashboard_queries()])
def test_every_dashboard_query_is_valid_promql(promtool: Tool, title: str, query: str) -> None:
    for variable in GRAFANA_INTERVALS:
        query = query.replace(variable, "5m")
    promtool.run("promql", "format", "--experimental", query)


def test_dashboard_panels_have_unique_ids_and_query_the_selected_data_source() -> None:
    """One JSON serves compose's Grafana and a cluster's: every query goes through the data-source variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variable = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == variable, panel["title"]
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"]) == ("datasource", "prometheus")
