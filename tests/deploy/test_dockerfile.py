"""The container image's Dockerfile: hadolint-clean, pinned, multi-stage, non-root, one entrypoint."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO, Tool

DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_dockerfile_passes_hadolint(hadolint: Tool) -> None:
    hadolint.run("--failure-threshold", "info", str(DOCKERFILE))


def test_base_image_is_a_slim_python_3_11_pinned_by_exact_tag() -> None:
    args = dict(arguments.split("=", 1) for keyword, arguments in instructions() if keyword == "ARG")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"])
    stages = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dependencies_install_pinned_by_the_constraints_file() -> None:
    installs = [arguments for keyword, arguments in instructions() if keyword == "RUN" and "pip install" in arguments]
    assert installs and all("-c constraints.txt" in command for command in installs)


def test_final_stage_runs_fleetwatch_as_a_non_root_user_without_build_tools() -> None:
    stage = final_stage()
    keywords = [keyword for keyword, _ in stage]
    (user,) = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "a numeric non-root uid:gid, checkable by runAsNonRoot"
    assert ("ENTRYPOINT", '["fleetwatch"]') in stage
    assert ("EXPOSE", "9400 8443") in stage, "the roles' metrics port and the console's"
    # Only the built virtual environment comes over; nothing in this stage installs or compiles.
    assert ("COPY", "--from=build /opt/venv /opt/venv") in stage
    commands = " ".join(arguments for keyword, arguments in stage if keyword == "RUN")
    assert not re.search(r"\b(pip|apt-get|apk|gcc|make)\b", commands)
    # The user is set after the last root-owned step, so the process runs as it.
    assert keywords.index("USER") > max(i for i, keyword in enumerate(keywords) if keyword in ("RUN", "COPY"))


def test_build_context_leaves_out_local_state() -> None:
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    # Everything is excluded first, then only what the image needs is let back in.
    assert ignored[0] == "*"
    allowed = {line[1:] for line in ignored if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "shared/", "workers/"}


def requirements_the_image_installs() -> list[str]:
    """What the build stage's `python -c ... > /tmp/requirements.txt` writes, run here on pyproject.toml."""
    (command,) = [
        arguments for keyword, arguments in instructions() if keyword == "RUN" and "requirements.txt" in arguments
    ]
    words = shlex.split(command)
    assert words[:2] == ["python", "-c"] and words[3:5] == [">", "/tmp/requirements.txt"], words
    result = subprocess.run([sys.executable, "-c", words[2]], cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_image_installs_the_project_and_its_console_extra() -> None:
    project = PYPROJECT["project"]
    assert requirements_the_image_installs() == project["dependencies"] + project["optional-dependencies"]["console"]


def test_every_distribution_the_image_installs_is_pinned_by_the_constraints_file() -> None:
    """The requirements' closure, as resolved in this environment (which has the console extra), is pinned in
    constraints.txt at the versions the tests run with, so the image gets what was tested."""
    pins = {
        canonicalize_name(name): version
        for name, _, version in (
            line.strip().partition("==")
            for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
    }
    installed: dict[str, str] = {}
    expanded: set[tuple[str, str]] = set()
    pending = [(Requirement(text), "") for text in requirements_the_image_installs()]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        name = canonicalize_name(distribution.metadata["Name"])
        installed[name] = distribution.version
        for wanted in {"", *requirement.extras}:
            if (name, wanted) not in expanded:
                expanded.add((name, wanted))
                pending += [(Requirement(text), wanted) for text in distribution.requires or []]
    assert {"fastapi", "uvicorn", "pyjwt", "argon2-cffi", "psycopg-binary", "cryptography"} <= set(installed)
    assert {name: version for name, version in installed.items() if pins.get(name) != version} == {}


def test_the_console_page_ships_as_package_data() -> None:
    """`pip install .` in the build stage copies workers/console_page/ only because pyproject says so."""
    from workers.console import PAGE_DIR

    (pattern,) = PYPROJECT["tool"]["setuptools"]["package-data"]["workers"]
    shipped = {path.name for path in (REPO / "workers").glob(pattern)}
    assert {"index.html", "console.js", "console.css"} <= shipped
    assert shipped == {path.name for path in PAGE_DIR.iterdir() if path.is_file()}
