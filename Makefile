# The two commands of the README: `make run` serves on the embedded defaults, `make test` runs every check.
# `make check` is the everyday loop: the static checks and the tests that need no PostgreSQL, browser, nginx or
# model (docs/testing.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A virtualenv named from outside (`make check VENV=/path/to/venv`) is used as it is: nothing is installed into it.
DEV_ENV = $(if $(filter .venv,$(VENV)),$(VENV)/.installed-dev)
# Where the one-time llama-cpp-python build is kept (scripts/build-llama-wheel says why).
WHEELHOUSE ?= $(HOME)/.cache/threadline/wheels
# Installs are locked: every third-party package comes from requirements/*.lock at its pinned version with its
# hashes checked. llama-cpp-python is the one exception (pip builds it here, so its hash is this machine's): it is
# installed from the wheelhouse at the version pyproject.toml pins. `make lock` rewrites the locks.
PIP := $(BIN)/pip install --quiet
INSTALL_LOCKED = $(PIP) --require-hashes --no-deps -r $(1) \
	&& $(PIP) --no-deps --no-index --find-links $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION) \
	&& $(PIP) --no-deps -e . \
	&& $(BIN)/pip check
LLAMA_VERSION := $(shell sed -n 's/^version=\([0-9.]*\).*/\1/p' scripts/build-llama-wheel)
UV := $(BIN)/uv
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 --no-emit-package llama-cpp-python --no-header --no-annotate

.PHONY: run test check static bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml requirements/run.lock scripts/build-llama-wheel | $(BIN)/python
	bash scripts/build-llama-wheel $(BIN)/pip $(WHEELHOUSE)
	$(call INSTALL_LOCKED,requirements/run.lock)
	touch $@

$(VENV)/.installed-dev: pyproject.toml requirements/dev.lock scripts/build-llama-wheel | $(BIN)/python
	bash scripts/build-llama-wheel $(BIN)/pip $(WHEELHOUSE)
	$(call INSTALL_LOCKED,requirements/dev.lock)
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/threadline serve

# Every test, in parallel (one xdist worker per core; a test file stays on one worker, so its module-scoped
# servers start once). CI runs this.
test: static
	bash scripts/ensure-postgres
	bash scripts/ensure-chromium
	bash scripts/ensure-nginx
	$(BIN)/python -m pytest -n auto --dist loadfile

# THREADLINE_TEST_QUICK makes a test that reaches for PostgreSQL, a browser or nginx unmarked fail, not pass.
# In parallel like `make test`: one worker per core, a file's tests on one worker.
check: static
	THREADLINE_TEST_QUICK=1 $(BIN)/python -m pytest -q -n auto --dist loadfile \
		-m "not postgres and not browser and not nginx and not slow"

static: $(DEV_ENV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	PYTHONPATH=src $(BIN)/lint-imports
	$(BIN)/vulture

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/threads_list.py
	$(BIN)/python bench/model_throughput.py
	$(BIN)/python bench/turn_overhead.py

# Re-resolve the locks from pyproject.toml's ranges (newest versions inside them), then reinstall: `make lock test`.
lock: $(VENV)/.installed-dev
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/run.lock
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/dev.lock
	rm -f $(VENV)/.installed $(VENV)/.installed-dev

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
