# gsem — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: run test lint contract-doc clean-demo venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	test -f $(DEMO_DIR)/gsem.toml || $(BIN)/gsem init $(DEMO_DIR) --demo
	$(BIN)/gsem --data-dir $(DEMO_DIR) serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gsem transactions chs_adapters tests

contract-doc: $(STAMP)
	$(BIN)/gsem contract --format markdown > docs/contract.md
