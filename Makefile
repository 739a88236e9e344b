# The two commands of the README: `make demo` (the main job end to end) and `make test`.
# Both install what they need first (bin/setup and .ci/deploy-tools.sh are idempotent and fast when warm).
.PHONY: setup deploy-tools demo test lint

setup:
	bash bin/setup

deploy-tools: setup
	bash .ci/deploy-tools.sh

demo: setup
	.venv/bin/fleetwatch demo

lint: setup
	.venv/bin/ruff check shared workers tests bench
	.venv/bin/ruff format --check shared workers tests bench
	.venv/bin/mypy

test: lint deploy-tools
	FLEETWATCH_REQUIRE_INTEGRATION=1 .venv/bin/pytest --doctest-modules shared workers bench tests
