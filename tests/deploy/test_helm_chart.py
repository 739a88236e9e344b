"""The Helm chart: it lints, renders for every value set, passes kubeconform, and refuses bad scaling."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import (
    ALERT_RULES,
    CHART,
    DASHBOARD,
    KUBERNETES_SCHEMAS,
    KUBERNETES_VERSIONS,
    Tool,
    helm_template,
    render,
    value_set_id,
    value_sets,
)

# kubeconform validates these kinds only with a schema, and no package on the registries this project
# can reach ships the CRD schemas of KEDA (ScaledObject, TriggerAuthentication) or of the Prometheus
# Operator (ServiceMonitor, PrometheusRule): the npm @kubernetes-models packages hold compiled
# validators, not schemas. So they are skipped by name here, and checked by the tests below instead
# (the ScaledObject's bounds, the ServiceMonitor's job names; the PrometheusRule's rules go through promtool).
CRD_KINDS_WITHOUT_SCHEMA = ("ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule")
# kubeconform's file-name template, matching the layout .ci/deploy-tools.sh extracts (v1.37.0-local-strict/...).
SCHEMA_LOCATION = (
    f"{KUBERNETES_SCHEMAS}/"
    "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
)
# The roles a default install runs; one value set in ci/ leaves the summarizer out.
ROLES = ("worker", "trainer", "summarizer")
NO_SUMMARIZER_VALUES = CHART / "ci" / "no-summarizer-values.yaml"


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in documents)


def only(documents: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{name_suffix}, got {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only_container,) = deployment["spec"]["template"]["spec"]["containers"]
    return only_container


# Values that are Kubernetes API objects or free-form maps: documented as a whole, not field by field.
PASS_THROUGH_VALUES = {"resources", "livenessProbe", "readinessProbe", "podSecurityContext", "securityContext",
                       "labels", "annotations", "properties"}  # fmt: skip


def test_values_file_documents_every_key() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, inside_pass_through = [], None
    for number, line in enumerate(lines, start=1):
        key = re.match(r"^(\s*)([\w.-]+):", line)
        if not key:
            continue
        indent = len(key.group(1))
        if inside_pass_through is not None and indent > inside_pass_through:
            continue
        inside_pass_through = indent if key.group(2) in PASS_THROUGH_VALUES else None
        if not lines[number - 2].strip().startswith("#"):
            undocumented.append(f"{number}: {line.strip()}")
    assert undocumented == []


@pytest.mark.parametrize("values", value_sets(), ids=value_set_id)
def test_chart_lints_clean(helm: Tool, values: Path | None) -> None:
    helm.run("lint", "--strict", str(CHART), *(["--values", str(values)] if values else []))


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", value_sets(), ids=value_set_id)
def test_every_rendered_manifest_passes_kubeconform_strict(
    helm: Tool, kubeconform: Tool, yaml: ModuleType, values: Path | None, kube_version: str
) -> None:
    text, documents = render(helm, yaml, values, kube_version)
    result = kubeconform.run(
        "-strict",
        "-kubernetes-version", kube_version,
        "-schema-location", SCHEMA_LOCATION,
        "-skip", ",".join(CRD_KINDS_WITHOUT_SCHEMA),
        "-output", "json",
        "-summary",
        "-",
        stdin=text,
    )  # fmt: skip
    summary = json.loads(result.stdout)["summary"]
    expected_skips = sum(doc["kind"] in CRD_KINDS_WITHOUT_SCHEMA for doc in documents)
    assert summary == {
        "valid": len(documents) - expected_skips,
        "invalid": 0,
        "errors": 0,
        "skipped": expected_skips,
    }, result.stdout


def test_kubeconform_catches_a_misspelled_field(helm: Tool, kubeconform: Tool, yaml: ModuleType) -> None:
    """The schemas are really applied: one typo in a container is an invalid Deployment."""
    text, _ = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    result = kubeconform.run(
        "-strict", "-kubernetes-version", KUBERNETES_VERSIONS[-1], "-schema-location", SCHEMA_LOCATION, "-summary", "-",
        stdin=text.replace("livenessProbe:", "livenesProbe:", 1),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Invalid: 1," in result.stdout and "livenesProbe" in result.stdout


def test_default_values_give_every_role_but_no_autoscaler(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"} == {
        f"fleetwatch-{role}" for role in ROLES
    }
    assert not {"HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PrometheusRule"} & set(kinds(documents))
    assert only(documents, "Deployment", "-worker")["spec"]["replicas"] == 2
    assert only(documents, "PodDisruptionBudget", "-worker")["spec"]["maxUnavailable"] == 1


def test_disabling_the_summarizer_removes_only_the_summarizer_and_its_service(helm: Tool, yaml: ModuleType) -> None:
    assert NO_SUMMARIZER_VALUES in value_sets(), "lint and kubeconform run over every value set in ci/"
    _, disabled = render(helm, yaml, NO_SUMMARIZER_VALUES, KUBERNETES_VERSIONS[-1])
    _, enabled = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])

    def objects(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in documents}

    assert objects(enabled) - objects(disabled) == {
        ("Deployment", "fleetwatch-summarizer"),
        ("Service", "fleetwatch-summarizer"),
    }
    assert objects(disabled) <= objects(enabled)
    assert container(only(enabled, "Deployment", "-summarizer"))["args"] == ["summarizer", "--metrics-port", "9400"]
    assert only(enabled, "Service", "-summarizer")["metadata"]["labels"]["fleetwatch.io/job"] == "fleetwatch-summarizer"


def test_every_pod_is_restricted_probed_and_configured_from_the_configmap(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    configmap = only(documents, "ConfigMap", "fleetwatch")
    for role in ROLES:
        pod = only(documents, "Deployment", f"-{role}")["spec"]["template"]
        spec, main = pod["spec"], container(only(documents, "Deployment", f"-{role}"))
        assert main["args"] == [role, "--metrics-port", "9400"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert main["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}
        assert volumes[mounts["/etc/fleetwatch/fleetwatch.toml"]]["configMap"]["name"] == configmap["metadata"]["name"]
        assert {"name": "FLEETWATCH_CONFIG", "value": "/etc/fleetwatch/fleetwatch.toml"} in main["env"]
        assert main["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    worker_spec = only(documents, "Deployment", "-worker")["spec"]["template"]["spec"]
    assert worker_spec["terminationGracePeriodSeconds"] > 20, "must outlast the worker's own 20 s shutdown bound"


def test_keda_scales_the_workers_by_lag_and_replaces_the_fixed_replica_count(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, CHART / "ci" / "keda-values.yaml", KUBERNETES_VERSIONS[-1])
    scaled = only(documents, "ScaledObject", "-worker")
    worker = only(documents, "Deployment", "-worker")
    assert "replicas" not in worker["spec"]
    assert "HorizontalPodAutoscaler" not in kinds(documents)
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] <= 12
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "fleetwatch-scorers"
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    auth = only(documents, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password", "ca"}


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_an_autoscaler_maximum_above_the_partition_count_fails_to_render(helm: Tool, autoscaler: str) -> None:
    result = helm_template(
        helm,
        "--set", f"worker.{autoscaler}.enabled=true",
        "--set", "kafka.inputPartitions=12",
        "--set", f"worker.{autoscaler}.maxReplicas=13",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"worker.{autoscaler}.maxReplicas (13) exceeds kafka.inputPartitions (12)" in result.stderr


def test_hpa_and_keda_together_fail_to_render(helm: Tool) -> None:
    result = helm_template(helm, "--set", "worker.hpa.enabled=true", "--set", "worker.keda.enabled=true", check=False)
    assert result.returncode != 0
    assert "worker.hpa.enabled and worker.keda.enabled are exclusive" in result.stderr


def test_existing_secrets_are_referenced_and_no_secret_is_created(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, CHART / "ci" / "existing-secrets-values.yaml", KUBERNETES_VERSIONS[-1])
    assert "Secret" not in kinds(documents)
    for role in ROLES:
        main = container(only(documents, "Deployment", f"-{role}"))
        references = {
            env["name"]: (env["valueFrom"]["secretKeyRef"]["name"], env["valueFrom"]["secretKeyRef"]["key"])
            for env in main["env"]
            if "valueFrom" in env
        }
        assert references == {
            "FLEETWATCH_REGISTRY_KEY": ("fleetwatch-registry", "key"),
            "REDIS_PASSWORD": ("redis-auth", "password"),
            "FLEETWATCH_KAFKA_PROPERTIES__sasl.username": ("kafka-user-fleetwatch", "user"),
            "FLEETWATCH_KAFKA_PROPERTIES__sasl.password": ("kafka-user-fleetwatch", "password"),
        }
        volumes = {
            v["name"]: v for v in only(documents, "Deployment", f"-{role}")["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-client-tls"


def test_configmap_and_secrets_give_the_settings_a_worker_reads(
    helm: Tool, yaml: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's TOML, environment and Secret, loaded by shared.config the way a pod would load them."""
    from shared.config import load_settings

    _, documents = render(helm, yaml, CHART / "ci" / "keda-values.yaml", KUBERNETES_VERSIONS[-1])
    config_file = tmp_path / "fleetwatch.toml"
    config_file.write_text(only(documents, "ConfigMap", "fleetwatch")["data"]["fleetwatch.toml"])
    secrets = {
        doc["metadata"]["name"]: {key: base64.b64decode(value).decode() for key, value in doc["data"].items()}
        for doc in documents
        if doc["kind"] == "Secret"
    }
    for name in [name for name in os.environ if name.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(tmp_path / "no-dev-stack"))
    resolved: dict[str, str] = {}
    for env in container(only(documents, "Deployment", "-worker"))["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        else:
            # Kubernetes expands $(NAME) from variables defined earlier in the list.
            value = re.sub(r"\$\((\w+)\)", lambda m: resolved[m.group(1)], env["value"])
        resolved[env["name"]] = value
        monkeypatch.setenv(env["name"], value)
    monkeypatch.setenv("FLEETWATCH_CONFIG", str(config_file))

    settings = load_settings()

    assert settings.kafka_bootstrap == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert settings.kafka_properties == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "ssl.ca.location": "/etc/fleetwatch/kafka-tls/ca.crt",
        "sasl.username": "fleetwatch",
        "sasl.password": "not-a-real-password",
    }
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.registry_key is not None and len(settings.registry_key.get_secret_value()) == 48
    assert settings.log_format == "json"
    # The group whose lag KEDA reads is the group the workers join.
    (trigger,) = only(documents, "ScaledObject")["spec"]["triggers"]
    assert settings.worker.group_id == trigger["metadata"]["consumerGroup"]


def test_monitoring_objects_carry_the_one_alert_file_and_dashboard(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, CHART / "ci" / "monitoring-values.yaml", KUBERNETES_VERSIONS[-1])
    rule = only(documents, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(ALERT_RULES.read_text())
    dashboard = only(documents, "ConfigMap", "-dashboard")
    assert json.loads(dashboard["data"]["fleetwatch-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    # The alert rules select the workers by job="fleetwatch-worker": the ServiceMonitor names its jobs
    # after the Services' fleetwatch.io/job label.
    monitor = only(documents, "ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "fleetwatch.io/job"
    services = [doc for doc in documents if doc["kind"] == "Service"]
    assert {s["metadata"]["labels"]["fleetwatch.io/job"] for s in services} == {f"fleetwatch-{role}" for role in ROLES}
    assert all(monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items() for s in services)
    assert 'job="fleetwatch-worker"' in ALERT_RULES.read_text()
    assert all("prometheus.io/scrape" not in d["spec"]["template"]["metadata"]["annotations"]
               for d in documents if d["kind"] == "Deployment")  # fmt: skip
