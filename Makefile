# recpipe: `make repro` runs the pipeline, `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recpipe-installed
# The pipeline's commands (recpipe, dvc) come from the project's own environment.
export PATH := $(abspath $(BIN)):$(PATH)
export TF_USE_LEGACY_KERAS := 1

.PHONY: help setup repro test test-fast lint params results bench screenshot mlflow-server clean

help:
	@echo "make repro      set up .venv, then run the DVC pipeline (dvc repro)"
	@echo "make test       set up .venv, then run the whole test suite (slow tests included)"
	@echo "make test-fast  the test suite without slow tests and without DVC/Hydra/MLflow/recpipe subprocesses"
	@echo "make lint       ruff (lint and format check) over src tests scripts bench, mypy over src"
	@echo "make params     regenerate params.yaml from conf/ (recpipe compose)"
	@echo "make results    run every model on params.yaml's data, rewrite README's results table"
	@echo "make bench      run every bench/*.py with its defaults (serve.py needs models/export: make repro),"
	@echo "                bench/scale.py with SCALE (default: 300000 --users 3000 --items 1500, ~3 min;"
	@echo "                make bench SCALE=25000000: issue 12's ML-25M-sized run, ~10 min, 9 GiB peak)"
	@echo "make screenshot render MLflow's run comparison to docs/mlflow_compare.png"
	@echo "make mlflow-server  MLflow tracking server on PostgreSQL with authentication (docs/scale-out.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Reinstall when the project's dependencies change. recbole is only the carrier of the offline
# MovieLens 100K copy: installed without its dependencies and never imported.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps recbole==1.2.1
	touch $@

setup: $(STAMP)

# Headless Chromium for the MLflow screenshot (scripts/mlflow_screenshot.py and its test): Debian's
# packages, never a browser download.
CHROMIUM := /usr/bin/chromium /usr/bin/chromedriver
$(CHROMIUM) &:
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver

screenshot: setup $(CHROMIUM)
	$(BIN)/python scripts/mlflow_screenshot.py

# PostgreSQL for the MLflow tracking server (scripts/mlflow_server.py and its test): Debian's package.
POSTGRES := /usr/lib/postgresql
$(POSTGRES):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

# Needs MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment; options
# (--port, --state-dir, --backend-store-uri, ...) through MLFLOW_SERVER_ARGS.
mlflow-server: setup $(POSTGRES)
	$(BIN)/python scripts/mlflow_server.py $(MLFLOW_SERVER_ARGS)

repro: setup
	$(BIN)/dvc repro

test: setup $(CHROMIUM) $(POSTGRES)
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not integration"

LINT_PATHS := src tests scripts bench

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy src

params: setup
	$(BIN)/recpipe compose

# README's results table: every model on the default data (one sweep), then the table of that group.
MODELS := blend,window_ease,ials,mult_vae,mf,ncf,two_tower,hybrid,content
results: setup
	$(BIN)/recpipe run -m model=$(MODELS)
	$(BIN)/recpipe report --update-readme

# bench/scale.py's size in `make bench` (its own default is the full 25M run; README "Scale")
SCALE ?= 300000 --users 3000 --items 1500
bench: setup
	for b in bench/*.py; do \
		echo "== $$b"; \
		if [ $$b = bench/scale.py ]; then $(BIN)/python $$b $(SCALE) || exit 1; else $(BIN)/python $$b || exit 1; fi; \
	done

clean:
	rm -rf outputs .pytest_cache .hypothesis .mypy_cache .ruff_cache
