# Everything a developer or CI needs; `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test lint typecheck format bench docker-lint helm-lint all clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-groups
	@touch $@

install: $(VENV)/.installed ## create .venv from uv.lock (runtime + dev tools)

run: install ## start the demo: emulator + broker on the in-memory store, prints a curl line
	$(BIN)/token-broker demo

test: install ## run the whole test suite (starts its own redis-server instances)
	@command -v redis-server >/dev/null || { echo "redis-server is required: apt-get install -y redis-server"; exit 1; }
	$(BIN)/pytest

lint: install ## ruff check + format check
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix app tests
	$(BIN)/ruff format app tests

typecheck: install ## mypy --strict on app/
	$(BIN)/mypy

all: lint typecheck test ## everything CI checks

clean: ## remove the environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .run
