# The two commands: `make demo` runs the main job, `make test` passes the tests.
# Both set everything up themselves (Debian packages, virtual environment, packages,
# the embedded broker and Redis).
.PHONY: demo test test-security test-scaleout lint setup clean

VENV ?= .venv
BIN := $(VENV)/bin

demo:
	@scripts/setup.sh local
	@$(BIN)/streaming demo

setup:
	@scripts/setup.sh dev

lint: setup
	$(BIN)/ruff check streaming loadtest tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# the issue-15 groups alone (they also run in `make test`): TLS/SASL, Redis AUTH/TLS, secrets, signed
# models; two workers in one group, Redis Cluster
test-security: setup
	$(BIN)/python -m pytest -q -m security

test-scaleout: setup
	$(BIN)/python -m pytest -q -m scaleout

clean:
	-$(BIN)/streaming down 2>/dev/null
	rm -rf .streaming .pytest_cache .mypy_cache .ruff_cache
