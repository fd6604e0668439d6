# The two commands the README promises: `make run` and `make test`. Both build .venv from this repo's files:
# `make run` installs what ledger needs to run, nothing more; the dev tools (pytest, ruff, mypy, ...) come
# with `make test` and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Most tests wait on NATS, PostgreSQL or a child process rather than a core: 4 workers halve the run on 2.
# The few that measure CPU (marked serial) run afterwards, alone.
TEST_WORKERS ?= 4

.PHONY: run test lint bench clean

# runtime dependencies only
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# plus the dev tools
$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## run: install, then serve on the embedded default (SQLite + an embedded NATS server)
run: $(BIN)/.installed
	$(BIN)/ledger serve

## test: install with the dev tools, start PostgreSQL and NATS if they are down, run the whole test suite
test: $(BIN)/.installed-dev
	bash .ci/services
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not serial"
	$(BIN)/python -m pytest -m serial

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict ledger

bench: $(BIN)/.installed
	bash .ci/services
	$(BIN)/python bench/reserve.py

clean:
	rm -rf $(VENV)
