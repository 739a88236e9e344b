# The two commands of the README: `make demo` (the main job end to end) and `make test`.
# Both install what they need first (bin/setup is idempotent and fast when nothing changed).
.PHONY: setup demo test lint

setup:
	bash bin/setup

demo: setup
	.venv/bin/fleetwatch demo

lint: setup
	.venv/bin/ruff check shared workers tests
	.venv/bin/ruff format --check shared workers tests
	.venv/bin/mypy

test: lint
	FLEETWATCH_REQUIRE_INTEGRATION=1 .venv/bin/pytest --doctest-modules shared workers tests
