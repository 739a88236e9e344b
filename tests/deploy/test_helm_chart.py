"""The Helm chart: it lints, renders for every value set, passes kubeconform, and refuses bad scaling."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shared.config import ConsoleSettings

from .conftest import (
    ALERT_RULES,
    CHART,
    DASHBOARD,
    KUBERNETES_SCHEMAS,
    KUBERNETES_VERSIONS,
    Tool,
    helm_template,
    render,
    settings_as_deployed,
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
# The roles a default install runs with their metrics port; one value set in ci/ leaves the summarizer out.
ROLES = ("worker", "trainer", "summarizer")
NO_SUMMARIZER_VALUES = CHART / "ci" / "no-summarizer-values.yaml"
# The operations console, on by default, serving its API, page, /metrics and /healthz on its own port.
CONSOLE_PORT = 8443
CONSOLE_INGRESS_VALUES = CHART / "ci" / "console-ingress-values.yaml"
EXISTING_SECRETS_VALUES = CHART / "ci" / "existing-secrets-values.yaml"


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


def rendered_with(helm: Tool, yaml: ModuleType, *args: str) -> list[dict[str, Any]]:
    """The documents of the chart rendered with these extra `helm template` arguments (e.g. --set)."""
    return [doc for doc in yaml.safe_load_all(helm_template(helm, *args).stdout) if doc]


def objects(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in documents}


def mounted_volumes(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path -> the pod's volume mounted there."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(deployment)["volumeMounts"]}


def assert_restricted_and_configured(documents: list[dict[str, Any]], deployment: dict[str, Any]) -> None:
    """The restricted Pod Security Standard, a read-only root with emptyDirs to write in, and the ConfigMap."""
    spec, main = deployment["spec"]["template"]["spec"], container(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    mounts = mounted_volumes(deployment)
    assert mounts["/tmp"] == {"name": "tmp", "emptyDir": {}}
    assert mounts["/var/lib/fleetwatch"] == {"name": "data", "emptyDir": {}}
    configmap = only(documents, "ConfigMap", "fleetwatch")
    assert mounts["/etc/fleetwatch/fleetwatch.toml"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert {"name": "FLEETWATCH_CONFIG", "value": "/etc/fleetwatch/fleetwatch.toml"} in main["env"]


def decoded_secrets(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: {key: base64.b64decode(value).decode() for key, value in doc["data"].items()}
        for doc in documents
        if doc["kind"] == "Secret"
    }


def pod_environment(deployment: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as Kubernetes gives it: secretKeyRefs read from `secrets`, and $(NAME)
    expanded from variables defined earlier in the list."""
    resolved: dict[str, str] = {}
    for env in container(deployment)["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            resolved[env["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            resolved[env["name"]] = re.sub(r"\$\((\w+)\)", lambda m: resolved[m.group(1)], env["value"])
    return resolved


def settings_in_pod(
    documents: list[dict[str, Any]],
    role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    existing_secrets: dict[str, dict[str, str]] | None = None,
) -> Any:
    """The settings shared.config loads in one role's container: the rendered ConfigMap's TOML, the
    environment, and the chart's Secrets plus `existing_secrets` (those the chart only refers to)."""
    deployment = only(documents, "Deployment", f"-{role}")
    environment = pod_environment(deployment, {**decoded_secrets(documents), **(existing_secrets or {})})
    toml = only(documents, "ConfigMap", "fleetwatch")["data"]["fleetwatch.toml"]
    return settings_as_deployed(environment, toml, tmp_path, monkeypatch)


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


def test_default_values_give_every_role_and_the_console_but_no_autoscaler(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"} == {
        f"fleetwatch-{role}" for role in (*ROLES, "console")
    }
    assert not {"HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PrometheusRule", "Ingress"} & set(
        kinds(documents)
    )
    assert only(documents, "Deployment", "-worker")["spec"]["replicas"] == 2
    assert only(documents, "PodDisruptionBudget", "-worker")["spec"]["maxUnavailable"] == 1


def test_disabling_the_summarizer_removes_only_the_summarizer_and_its_service(helm: Tool, yaml: ModuleType) -> None:
    assert NO_SUMMARIZER_VALUES in value_sets(), "lint and kubeconform run over every value set in ci/"
    _, disabled = render(helm, yaml, NO_SUMMARIZER_VALUES, KUBERNETES_VERSIONS[-1])
    _, enabled = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    assert objects(enabled) - objects(disabled) == {
        ("Deployment", "fleetwatch-summarizer"),
        ("Service", "fleetwatch-summarizer"),
    }
    assert objects(disabled) <= objects(enabled)
    assert container(only(enabled, "Deployment", "-summarizer"))["args"] == ["summarizer", "--metrics-port", "9400"]
    assert only(enabled, "Service", "-summarizer")["metadata"]["labels"]["fleetwatch.io/job"] == "fleetwatch-summarizer"


def test_every_pod_is_restricted_probed_and_configured_from_the_configmap(helm: Tool, yaml: ModuleType) -> None:
    _, documents = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    for role in ROLES:
        deployment = only(documents, "Deployment", f"-{role}")
        pod, main = deployment["spec"]["template"], container(deployment)
        assert main["args"] == [role, "--metrics-port", "9400"]
        assert_restricted_and_configured(documents, deployment)
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
    _, documents = render(helm, yaml, EXISTING_SECRETS_VALUES, KUBERNETES_VERSIONS[-1])
    assert "Secret" not in kinds(documents)
    shared_references = {
        "FLEETWATCH_REGISTRY_KEY": ("fleetwatch-registry", "key"),
        "REDIS_PASSWORD": ("redis-auth", "password"),
        "FLEETWATCH_KAFKA_PROPERTIES__sasl.username": ("kafka-user-fleetwatch", "user"),
        "FLEETWATCH_KAFKA_PROPERTIES__sasl.password": ("kafka-user-fleetwatch", "password"),
    }
    console_references = {
        "FLEETWATCH_CONSOLE__SIGNING_KEY": ("fleetwatch-console", "signing-key"),
        "FLEETWATCH_CONSOLE__STORE_URL": ("fleetwatch-console", "store-url"),
    }
    for role in (*ROLES, "console"):
        deployment = only(documents, "Deployment", f"-{role}")
        references = {
            env["name"]: (env["valueFrom"]["secretKeyRef"]["name"], env["valueFrom"]["secretKeyRef"]["key"])
            for env in container(deployment)["env"]
            if "valueFrom" in env
        }
        assert references == shared_references | (console_references if role == "console" else {})
        assert mounted_volumes(deployment)["/etc/fleetwatch/kafka-tls"]["secret"]["secretName"] == "kafka-client-tls"
    console = only(documents, "Deployment", "-console")
    assert mounted_volumes(console)["/etc/fleetwatch/console-tls"]["secret"]["secretName"] == "fleetwatch-console-tls"


def test_configmap_and_secrets_give_the_settings_a_worker_reads(
    helm: Tool, yaml: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's TOML, environment and Secret, loaded by shared.config the way a pod would load them."""
    _, documents = render(helm, yaml, CHART / "ci" / "keda-values.yaml", KUBERNETES_VERSIONS[-1])

    settings = settings_in_pod(documents, "worker", tmp_path, monkeypatch)

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
    assert {s["metadata"]["labels"]["fleetwatch.io/job"] for s in services} == {
        f"fleetwatch-{role}" for role in (*ROLES, "console")
    }
    assert all(monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items() for s in services)
    # One endpoint per port name: the roles' metrics port, and the console's own port over HTTPS (its
    # certificate is self-signed and names localhost, not the pod).
    endpoints = {endpoint["port"]: endpoint for endpoint in monitor["spec"]["endpoints"]}
    assert set(endpoints) == {"metrics", "console"}
    assert endpoints["console"]["scheme"] == "https"
    assert endpoints["console"]["tlsConfig"] == {"insecureSkipVerify": True}
    assert {port["name"] for port in only(documents, "Service", "-console")["spec"]["ports"]} == {"console"}
    assert 'job="fleetwatch-worker"' in ALERT_RULES.read_text()
    assert all("prometheus.io/scrape" not in d["spec"]["template"]["metadata"]["annotations"]
               for d in documents if d["kind"] == "Deployment")  # fmt: skip


def test_console_serves_https_on_its_own_port_with_its_sqlite_store_on_a_kept_claim(
    helm: Tool, yaml: ModuleType
) -> None:
    _, documents = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    deployment = only(documents, "Deployment", "-console")
    main, pod = container(deployment), deployment["spec"]["template"]
    assert main["args"] == ["console", "serve"]
    assert_restricted_and_configured(documents, deployment)
    # One process per SQLite file on a ReadWriteOnce claim: one replica, and the old pod goes first.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = only(documents, "PersistentVolumeClaim", "-console")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    store = mounted_volumes(deployment)["/var/lib/fleetwatch/console"]
    assert store["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # Its API, page, /metrics and the probes are on one HTTPS port; the probes speak HTTPS to it.
    assert main["ports"] == [{"name": "console", "containerPort": CONSOLE_PORT, "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert main[probe]["httpGet"] == {"path": path, "port": "console", "scheme": "HTTPS"}
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/scheme"]) == (str(CONSOLE_PORT), "https")
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    service = only(documents, "Service", "-console")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "console", "port": CONSOLE_PORT, "targetPort": "console", "protocol": "TCP", "appProtocol": "https"}
    ]
    # The JWT signing key: generated into the chart's Secret (kept across upgrades like the registry key).
    secret = only(documents, "Secret", "fleetwatch")
    key_reference = {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "console-signing-key"}}
    assert {"name": "FLEETWATCH_CONSOLE__SIGNING_KEY", "valueFrom": key_reference} in main["env"]
    assert len(decoded_secrets(documents)["fleetwatch"]["console-signing-key"]) == 48


@pytest.mark.parametrize(
    ("values", "existing_secrets"),
    [
        (None, {}),
        (EXISTING_SECRETS_VALUES, {
            "fleetwatch-registry": {"key": "a-registry-key-of-enough-bytes"},
            "redis-auth": {"password": "redis-password"},
            "kafka-user-fleetwatch": {"user": "fleetwatch", "password": "kafka-password"},
            "fleetwatch-console": {"signing-key": "a-console-signing-key", "store-url": "postgresql://console:pw@pg/console"},
        }),
    ],
    ids=["default", "existing-secrets"],
)  # fmt: skip
def test_console_settings_load_through_shared_config(
    helm: Tool,
    yaml: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    values: Path | None,
    existing_secrets: dict[str, dict[str, str]],
) -> None:
    """The console's pod gets, through shared.config, the port its container exposes, on all addresses, its
    key from the Secret, its store on the mounted claim (or PostgreSQL from a Secret) and its certificate."""
    _, documents = render(helm, yaml, values, KUBERNETES_VERSIONS[-1])
    deployment = only(documents, "Deployment", "-console")

    console = settings_in_pod(documents, "console", tmp_path, monkeypatch, existing_secrets).console

    (port,) = container(deployment)["ports"]
    assert (console.host, console.port, console.tls) == ("0.0.0.0", port["containerPort"], True)
    secrets = {**decoded_secrets(documents), **existing_secrets}
    key_name, key = ("fleetwatch-console", "signing-key") if values else ("fleetwatch", "console-signing-key")
    assert console.signing_key is not None and console.signing_key.get_secret_value() == secrets[key_name][key]
    mounts = mounted_volumes(deployment)
    if values is None:
        assert console.store_url == "sqlite:////var/lib/fleetwatch/console/console.db"
        assert "persistentVolumeClaim" in mounts["/var/lib/fleetwatch/console"]
        # No certificate given: the development one, generated into FLEETWATCH_DEV_DIR (the writable emptyDir).
        assert console.tls_cert_file is None and console.tls_key_file is None
    else:
        assert console.store_url == "postgresql://console:pw@pg/console"
        assert "/var/lib/fleetwatch/console" not in mounts
        assert (str(console.tls_cert_file), str(console.tls_key_file)) == (
            "/etc/fleetwatch/console-tls/tls.crt",
            "/etc/fleetwatch/console-tls/tls.key",
        )
        assert mounts["/etc/fleetwatch/console-tls"]["secret"]["secretName"] == "fleetwatch-console-tls"
        # Several replicas on the shared PostgreSQL store, rolled one by one.
        assert deployment["spec"]["replicas"] == 2 and "strategy" not in deployment["spec"]
        assert "PersistentVolumeClaim" not in kinds(documents)


def test_console_ingress_routes_its_host_to_the_console_service_with_tls(helm: Tool, yaml: ModuleType) -> None:
    assert CONSOLE_INGRESS_VALUES in value_sets(), "lint and kubeconform run over every value set in ci/"
    _, documents = render(helm, yaml, CONSOLE_INGRESS_VALUES, KUBERNETES_VERSIONS[-1])
    ingress = only(documents, "Ingress", "-console")
    service = only(documents, "Service", "-console")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["console.fleetwatch.example"], "secretName": "console-fleetwatch-example-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "console.fleetwatch.example"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    # The console still serves HTTPS itself: the controller is told to proxy to an HTTPS backend.
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    # The controller's forwarded header names the client, so the login throttle counts clients, not the ingress.
    environment = pod_environment(only(documents, "Deployment", "-console"), decoded_secrets(documents))
    trusted = ConsoleSettings(trusted_proxies=json.loads(environment["FLEETWATCH_CONSOLE__TRUSTED_PROXIES"]))
    assert [str(network) for network in trusted.trusted_proxies] == ["10.42.7.0/24"]
    claim = only(documents, "PersistentVolumeClaim", "-console")
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_console_without_tls_speaks_http_everywhere(helm: Tool, yaml: ModuleType) -> None:
    """Behind an Ingress or mesh that terminates TLS: probes, Service, scrape annotations and settings agree."""
    documents = rendered_with(
        helm, yaml, "--set", "console.tls.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"
    )
    deployment = only(documents, "Deployment", "-console")
    main = container(deployment)
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["scheme"] == "HTTP"
    assert only(documents, "Service", "-console")["spec"]["ports"][0]["appProtocol"] == "http"
    assert "prometheus.io/scheme" not in deployment["spec"]["template"]["metadata"]["annotations"]
    endpoints = {endpoint["port"]: endpoint for endpoint in only(documents, "ServiceMonitor")["spec"]["endpoints"]}
    assert "scheme" not in endpoints["console"] and "tlsConfig" not in endpoints["console"]
    assert "tls = false" in only(documents, "ConfigMap", "fleetwatch")["data"]["fleetwatch.toml"]


def test_more_than_one_console_on_sqlite_fails_to_render(helm: Tool) -> None:
    result = helm_template(helm, "--set", "console.replicas=2", check=False)
    assert result.returncode != 0
    assert "console.replicas (2) needs console.store.postgresql.enabled" in result.stderr


def test_disabling_the_console_removes_its_objects_key_and_settings(helm: Tool, yaml: ModuleType) -> None:
    _, enabled = render(helm, yaml, None, KUBERNETES_VERSIONS[-1])
    disabled = rendered_with(helm, yaml, "--set", "console.enabled=false", "--set", "console.ingress.enabled=true")
    assert objects(enabled) - objects(disabled) == {
        ("Deployment", "fleetwatch-console"),
        ("Service", "fleetwatch-console"),
        ("PersistentVolumeClaim", "fleetwatch-console"),
    }
    assert "console-signing-key" not in decoded_secrets(disabled)["fleetwatch"]
    assert "[console]" not in only(disabled, "ConfigMap", "fleetwatch")["data"]["fleetwatch.toml"]


def test_a_postgresql_store_url_given_in_values_goes_to_the_chart_secret_or_rendering_fails(
    helm: Tool, yaml: ModuleType
) -> None:
    postgresql = ("--set", "console.store.postgresql.enabled=true", "--set", "console.replicas=3")
    missing = helm_template(helm, *postgresql, check=False)
    assert missing.returncode != 0
    assert "console.store.postgresql.url is required" in missing.stderr
    url = "postgresql://console:pw@pg.data.svc/console"
    documents = rendered_with(helm, yaml, *postgresql, "--set", f"console.store.postgresql.url={url}")
    deployment = only(documents, "Deployment", "-console")
    assert deployment["spec"]["replicas"] == 3
    assert pod_environment(deployment, decoded_secrets(documents))["FLEETWATCH_CONSOLE__STORE_URL"] == url
    assert "PersistentVolumeClaim" not in kinds(documents)
    assert "store_url" not in only(documents, "ConfigMap", "fleetwatch")["data"]["fleetwatch.toml"]
