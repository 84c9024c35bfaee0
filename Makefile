# privface: `make demo` runs the whole pipeline on the embedded synthetic dataset,
# `make test` runs the test suite. Both create .venv and install everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own: an unpinned torch pulls a CUDA build of several GB.
# CPU machines get the CPU build 2.13.0; with an NVIDIA driver present, pip picks the CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PROFILE ?= demo
SEEDS ?= 3
HOST ?= 127.0.0.1
DAGSTER_HOME ?= $(CURDIR)/dagster_home
export DAGSTER_DISABLE_TELEMETRY := yes
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

STAMP := $(VENV)/.installed
# DVC lives in an environment of its own: its hydra-core pins an antlr4 runtime older than the
# one Dagster's asset-selection grammar needs. Every target and test calls $(DVC).
DVC_VENV ?= .venv-dvc
DVC := $(DVC_VENV)/bin/dvc
DVC_STAMP := $(DVC_VENV)/.installed
export PRIVFACE_DVC := $(abspath $(DVC))

.PHONY: install demo study run test test-unit bench ui mlflow-ui dvc-status clean help

help:
	@echo "make demo       whole pipeline on the synthetic dataset (demo profile), prints the table"
	@echo "make study      the demo profile with SEEDS=3 seeds: mean and spread per defense"
	@echo "make test       the test suite (unit + integration on real Dagster/MLflow/DVC)"
	@echo "make bench      benchmarks -> reports/bench.json"
	@echo "make ui         Dagster UI (webserver + daemon) on http://$(HOST):3000"
	@echo "make mlflow-ui  MLflow UI on http://$(HOST):5000"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $@

$(DVC_STAMP): requirements-dvc.lock
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install -q --upgrade pip
	$(DVC_VENV)/bin/python -m pip install -q -r requirements-dvc.lock
	touch $@

install: $(STAMP) $(DVC_STAMP)

demo: install
	$(BIN)/privface generate --profile demo
	$(BIN)/privface run --profile demo
	@echo "--- dvc status (data/ against the committed data.dvc):"
	@# caches data/ only if it matches data.dvc (a changed dataset is refused, never recorded)
	@$(DVC) commit -q data.dvc </dev/null || echo "data/ differs from the committed data.dvc"
	@$(DVC) status data.dvc

study: install
	$(BIN)/privface generate --profile $(PROFILE)
	$(BIN)/privface study --profile $(PROFILE) --seeds $(SEEDS)

run: install
	$(BIN)/privface run --profile $(PROFILE) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(DEFENSES),--defenses $(DEFENSES))

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python -m benchmarks.bench_verification
	$(BIN)/python -m benchmarks.bench_pipeline
	$(BIN)/python -m benchmarks.bench_freq

ui: install
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/python -c "from pipelines.cli import ensure_dagster_home; ensure_dagster_home()"
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -m pipelines.definitions -h $(HOST) -p 3000

mlflow-ui: install
	mkdir -p mlflow/artifacts
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlflow/artifacts --host $(HOST) --port 5000

dvc-status: install
	$(DVC) status

clean:
	rm -rf artifacts reports dagster_home .pytest_cache
