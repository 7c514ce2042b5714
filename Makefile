# gsem — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: one per CPU (`auto`); 0 runs the suite in one process.
PYTEST_WORKERS ?= auto

.PHONY: run test lint contract-doc clean-demo venv pg-start

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	test -f $(DEMO_DIR)/gsem.toml || $(BIN)/gsem init $(DEMO_DIR) --demo
	$(BIN)/gsem --data-dir $(DEMO_DIR) serve

# One incident's whole lifecycle between ACME (the reference CHS client) and GLOBEX's
# Request Tracker, through a hub in a fresh demo/run-<time>; prints a timeline and the
# commands to inspect it (README "Demo").  DEMO_ARGS: e.g. --keep-running (scripts/demo.py --help).
.PHONY: demo
DEMO_ARGS ?=
demo: $(STAMP)
	@rt_url=$$(bash .ci/rt-start) || { echo "make demo: Request Tracker could not start (.ci/rt-start's messages are above)" >&2; exit 1; }; \
	$(BIN)/python scripts/demo.py --rt-url "$$rt_url" $(DEMO_ARGS)

# The storage tests also run against a real PostgreSQL: .ci/pg-start installs it if
# needed, starts a throw-away cluster and prints its URL. Set GSEM_TEST_PG_URL yourself
# to use another server. If it cannot start, the tests still run and the PostgreSQL
# ones are skipped with the reason.  Likewise the Request Tracker adapter's tests run
# against a real RT 5: .ci/rt-start installs it if needed (~2 min once), starts a
# throw-away instance on 127.0.0.1 and prints its URL (GSEM_TEST_RT_URL to use another).
test: $(STAMP)
	@url="$${GSEM_TEST_PG_URL:-}"; reason=""; \
	if [ -z "$$url" ]; then \
		url=$$(bash .ci/pg-start) || { url=""; reason=".ci/pg-start could not start PostgreSQL (see its messages above)"; }; \
	fi; \
	echo "GSEM_TEST_PG_URL=$$url"; \
	rt_url="$${GSEM_TEST_RT_URL:-}"; rt_reason=""; \
	if [ -z "$$rt_url" ]; then \
		rt_url=$$(bash .ci/rt-start) || { rt_url=""; rt_reason=".ci/rt-start could not start Request Tracker (see its messages above)"; }; \
	fi; \
	echo "GSEM_TEST_RT_URL=$$rt_url"; \
	GSEM_TEST_PG_URL="$$url" GSEM_TEST_PG_SKIP_REASON="$$reason" \
	GSEM_TEST_RT_URL="$$rt_url" GSEM_TEST_RT_SKIP_REASON="$$rt_reason" \
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

pg-start:
	bash .ci/pg-start

lint: $(STAMP)
	$(BIN)/ruff check gsem transactions chs_adapters tests

contract-doc: $(STAMP)
	$(BIN)/gsem contract --format markdown > docs/contract.md

# The benchmark (bench/README.md): a few minutes; SOAK=600 adds a 10-minute memory soak.
# Results go to bench/results/ and the results block of docs/benchmarks.md.
.PHONY: bench
SOAK ?=
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(SOAK),--soak $(SOAK)) $(BENCH_ARGS)
