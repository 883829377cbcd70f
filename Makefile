# The two commands of the README: `make run` serves on the embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where the one-time llama-cpp-python build is kept (scripts/build-llama-wheel says why).
WHEELHOUSE ?= $(HOME)/.cache/threadline/wheels
PIP_INSTALL := $(BIN)/pip install --quiet --find-links $(WHEELHOUSE)

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml scripts/build-llama-wheel | $(BIN)/python
	bash scripts/build-llama-wheel $(BIN)/pip $(WHEELHOUSE)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml scripts/build-llama-wheel | $(BIN)/python
	bash scripts/build-llama-wheel $(BIN)/pip $(WHEELHOUSE)
	$(PIP_INSTALL) -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/threadline serve

test: $(VENV)/.installed-dev
	bash scripts/ensure-postgres
	bash scripts/ensure-chromium
	bash scripts/ensure-nginx
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/threads_list.py
	$(BIN)/python bench/model_throughput.py
	$(BIN)/python bench/turn_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
