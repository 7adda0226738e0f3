# The two commands: `make demo` runs the main job, `make test` passes the tests.
# Both set everything up themselves (Debian packages, virtual environment, packages,
# the embedded broker and Redis).
.PHONY: demo test lint setup clean

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

clean:
	-$(BIN)/streaming down 2>/dev/null
	rm -rf .streaming .pytest_cache .mypy_cache .ruff_cache
