# One entry point: `make run` sets everything up and runs the main job; `make test` sets everything
# up and runs the tests (this is what .ci/run calls).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1

.PHONY: setup run test test-fast lint bench clean

$(BIN)/recs: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

setup: $(BIN)/recs

run: setup
	$(BIN)/recs run

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests: no Prefect server, no subprocess runs of the CLI or the benchmark (under 2 minutes).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check tasks storage flows benchmarks tests
	$(BIN)/ruff format --check tasks storage flows benchmarks tests
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.pipeline --quick

clean:
	rm -rf $(VENV) data .pytest_cache
