"""The compose stack: a valid Compose file whose services can scale, start in order, and are all scraped."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest

from .conftest import ALERT_RULES, COMPOSE_FILE, DASHBOARD, PROMETHEUS_CONFIG, REPO, Tool, settings_as_deployed

FLEETWATCH_ROLES = ("trainer", "worker", "summarizer")
TOPICS = ("events.transactions", "events.logs", "events.metrics", "alerts", "summary.transactions", "summary.logs",
          "summary.metrics", "deadletter", "reports.summary", "interventions", "audit")  # fmt: skip
# An exact version tag: digits and dots, optionally a variant (apache/kafka:4.1.1, python:3.11.14-slim-bookworm).
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(-[\w.-]+)?$")
CONSOLE_PORT = 8443


@pytest.fixture(scope="module")
def model(compose_spec: Tool) -> dict[str, Any]:
    """The compose model as the Compose Specification's loader resolves it: schema-validated, interpolated,
    with relative paths resolved against the file's folder, and checked for consistency (references to
    services, networks and volumes that exist). Run where `docker compose` would run it. This loader
    interpolates without any environment, so every `${VAR:-default}` takes its default."""
    result = compose_spec.run("--format", "json", COMPOSE_FILE.name, cwd=COMPOSE_FILE.parent)
    return json.loads(result.stdout)


def created_topics(model: dict[str, Any]) -> dict[str, int]:
    """Topic -> partitions, as the `topics` service's loop creates them."""
    script = model["services"]["topics"]["command"][0]
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop, script
    return {name: int(partitions) for name, _, partitions in (spec.partition(":") for spec in loop.group(1).split())}


def test_every_image_is_pinned_or_built_here(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        if "build" in service:
            assert Path(service["build"]["context"], service["build"]["dockerfile"]).is_file(), name
        else:
            assert PINNED_TAG.match(service["image"]), f"{name}: {service['image']} is not pinned to an exact tag"


def test_fleetwatch_roles_share_the_image_and_can_scale(model: dict[str, Any]) -> None:
    services = model["services"]
    for role in FLEETWATCH_ROLES:
        service = services[role]
        assert service["image"] == services["train"]["image"]
        assert service["command"][0] == role
        if "--metrics-port" in service["command"]:
            assert service["command"][service["command"].index("--metrics-port") + 1] == "9400"
        # A fixed name or host port would stop `docker compose up --scale worker=4`.
        assert "container_name" not in service
        assert "ports" not in service
        assert "9400" in service["healthcheck"]["test"][-1]
    # The first model version is trained on the generated events, evaluated against their labels.
    assert (
        "fleetwatch train /tmp/seed/transactions.parquet --labels /tmp/seed/transactions.labels.parquet"
        in (services["train"]["command"][0])
    )


def test_plain_up_starts_every_service_and_nothing_depends_on_the_summarizer(model: dict[str, Any]) -> None:
    """`docker compose up` without --profile starts the services that have no profiles: all of them."""
    services = model["services"]
    assert not [name for name, service in services.items() if "profiles" in service]
    assert set(services) == {"kafka", "topics", "redis", "train", "trainer", "worker", "summarizer", "console",
                             "prometheus", "grafana"}  # fmt: skip
    for name, service in services.items():
        assert "summarizer" not in service.get("depends_on", {}), f"{name} waits for the summarizer"


def test_services_start_once_what_they_need_is_ready(model: dict[str, Any]) -> None:
    services = model["services"]
    one_shots = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shots == {"topics", "train"}
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
            if expected == "service_healthy":
                assert "test" in services[dependency]["healthcheck"], f"{dependency} has no healthcheck"
    assert set(services["worker"]["depends_on"]) == {"train"}
    assert set(services["train"]["depends_on"]) == {"redis", "topics"}


def test_the_topics_service_creates_every_topic(model: dict[str, Any]) -> None:
    created = created_topics(model)
    assert set(created) == set(TOPICS)
    assert created["events.transactions"] >= 4, "--scale worker=4 needs at least 4 input partitions"


def test_the_console_serves_https_on_loopback_with_its_store_on_a_volume(model: dict[str, Any]) -> None:
    services = model["services"]
    console = services["console"]
    assert console["image"] == services["train"]["image"]
    assert console["command"] == ["console", "serve"]
    # Published on the host's loopback only; one process per SQLite store, so one replica (a fixed host port).
    assert [(p["host_ip"], p["published"], p["target"]) for p in console["ports"]] == [
        ("127.0.0.1", str(CONSOLE_PORT), CONSOLE_PORT)
    ]
    assert console["expose"] == [str(CONSOLE_PORT)]
    (store,) = console["volumes"]
    assert store["type"] == "volume" and store["source"] in model["volumes"]
    assert store["target"] == "/var/lib/fleetwatch", "the image's working directory, owned by its user"
    # Probed over HTTPS on its own port, with the other roles' timings.
    assert f"https://127.0.0.1:{CONSOLE_PORT}/healthz" in console["healthcheck"]["test"][-1]
    assert {k: v for k, v in console["healthcheck"].items() if k != "test"} == {
        k: v for k, v in services["worker"]["healthcheck"].items() if k != "test"
    }
    # Its topics exist (the topics service) and the registry is up before it starts; no model is needed.
    assert set(console["depends_on"]) == {"redis", "topics"}


def test_the_console_environment_loads_through_shared_config(
    model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console service's environment is what shared.config needs: it listens on the published port, keeps
    its store and its generated signing key on the volume, and reads and writes topics that exist."""
    service = model["services"]["console"]

    settings = settings_as_deployed(service["environment"], None, tmp_path, monkeypatch)

    console = settings.console
    (port,) = service["ports"]
    assert (console.host, console.port, console.tls) == ("0.0.0.0", port["target"], True)
    (volume,) = service["volumes"]
    store = PurePosixPath(console.store_url.removeprefix("sqlite:///"))
    assert console.store_url.startswith("sqlite:////") and store.is_relative_to(volume["target"])
    # No key given: the console generates one into FLEETWATCH_DEV_DIR (the image's), which is on the volume.
    assert not console.signing_key and console.signing_key_file is None
    image_dev_dir = re.search(r"FLEETWATCH_DEV_DIR=(\S+)", (REPO / "Dockerfile").read_text())
    assert image_dev_dir and PurePosixPath(image_dev_dir.group(1)).is_relative_to(volume["target"])
    assert settings.kafka_bootstrap == "kafka:9092"
    read_and_written = {
        settings.topics.alerts,
        settings.topics.reports,
        console.interventions_topic,
        console.audit_topic,
    }
    assert read_and_written <= set(created_topics(model))
    assert set(settings.all_topics()) <= set(created_topics(model))


def test_the_console_key_and_store_can_come_from_the_host_environment(compose_spec: Tool) -> None:
    """Before interpolation: FLEETWATCH_CONSOLE_SIGNING_KEY and FLEETWATCH_CONSOLE_STORE_URL on the host
    (or in compose/.env) set the signing key and the store (PostgreSQL); left unset, the defaults above."""
    result = compose_spec.run("--format", "json", "-no-interpolation", COMPOSE_FILE.name, cwd=COMPOSE_FILE.parent)
    environment = json.loads(result.stdout)["services"]["console"]["environment"]
    assert environment["FLEETWATCH_CONSOLE__SIGNING_KEY"] == "${FLEETWATCH_CONSOLE_SIGNING_KEY:-}"
    assert environment["FLEETWATCH_CONSOLE__STORE_URL"].startswith("${FLEETWATCH_CONSOLE_STORE_URL:-sqlite:")


def test_prometheus_and_grafana_mount_the_one_copy_of_rules_and_dashboard(model: dict[str, Any]) -> None:
    def sources(service: str) -> set[Path]:
        return {Path(v["source"]) for v in model["services"][service]["volumes"] if v["type"] == "bind"}

    assert {ALERT_RULES, PROMETHEUS_CONFIG} <= sources("prometheus")
    assert DASHBOARD in sources("grafana")
    for service in ("prometheus", "grafana"):
        for source in sources(service):
            assert source.exists(), f"{service} mounts {source}, which does not exist"


def test_prometheus_scrapes_every_replica_of_every_role(model: dict[str, Any], yaml: ModuleType) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for role in FLEETWATCH_ROLES:
        # DNS discovery of the service name returns one address per replica.
        (discovery,) = jobs[f"fleetwatch-{role}"]["dns_sd_configs"]
        assert discovery["names"] == [role] and discovery["port"] == 9400
        assert role in model["services"]


def test_prometheus_scrapes_the_console_over_https(model: dict[str, Any], yaml: ModuleType) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = {job["job_name"]: job for job in config["scrape_configs"]}["fleetwatch-console"]
    # The console's certificate is the self-signed development one.
    assert job["scheme"] == "https" and job["tls_config"] == {"insecure_skip_verify": True}
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["console"] and discovery["port"] == CONSOLE_PORT
    assert model["services"]["console"]["ports"][0]["target"] == CONSOLE_PORT
