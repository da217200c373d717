# One-command set-up, run and test. `make run` and `make test` work on a fresh machine:
# each creates .venv and installs the project into it first.
#   make smoke                    fetch MNIST, then a smoke run: every pipeline in about a minute
#   make run                      fetch MNIST (download), then `kedro run`
#   make run DATA_DIR=/path       the same offline, from a folder holding the four IDX files
#   make test                     the test suite over every core (tests make their own tiny data)
#   make test-fast                its unit tier alone (pytest -m "not pipeline and not process")
#   make mlflow-ui PORT=5001      the MLflow UI; make viz, make ipython, make serve likewise
#   make steer ENTRY=where DATASET=translated_mnist   the page to steer a model by hand
#   make docs / make docs-build   the documentation site: served, or built as CI does
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= mnist
DATA_DIR ?= $(ATTN_PIPELINE_DATA_DIR)
PORT ?= 5000
# the registered model `make serve` serves: attn_pipeline.<DATASET>.<ENTRY>@champion
ENTRY ?= spatial_gate
MODEL ?= models:/attn_pipeline.$(DATASET).$(ENTRY)@champion
export KEDRO_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
# The tools start helpers by name (`kedro mlflow ui` runs `mlflow`, `mlflow models serve`
# runs `uvicorn`, `kedro ipython` runs `ipython`): the environment's come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup data smoke run test test-fast browser lint viz mlflow-ui serve steer ipython lock docs docs-build

LOCK := requirements.lock

# Installs pyproject.toml's dependencies at the exact versions of the lock file.
$(BIN)/kedro $(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) -e ".[dev]"
	touch $(VENV)/.installed

# Refresh the lock: resolve pyproject.toml's ranges afresh in a scratch environment and
# record every version installed. Then `make setup` (a changed lock reinstalls) and test.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	{ sed -n '1,2p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

setup: $(VENV)/.installed

data: setup
	$(BIN)/attn-fetch-data $(DATASET) $(if $(DATA_DIR),--local-dir $(DATA_DIR))

# A smoke run: every pipeline of the default run on MNIST in about a minute (conf/smoke).
smoke: data
	$(BIN)/kedro run --env smoke

run: data
	$(BIN)/kedro run $(if $(filter-out mnist,$(DATASET)),--env $(DATASET))

test: setup browser
	$(BIN)/python -m pytest -n auto --dist loadgroup

# Debian's chromium for the browser tests, where it is missing and this is root with apt-get;
# elsewhere those tests are skipped (and fail under CI=true).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "no chromium: the browser tests are skipped here"

# The unit tier: no process of the stack, no Kedro session (about 30 s on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -m "not pipeline and not process"

# The documentation site (mkdocs-material): served with live reload, or built into site/
# with --strict (a broken link, a missing page or a missing included file fails).
export NO_MKDOCS_2_WARNING := 1
DOCS_PORT ?= 8000
docs: setup
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

docs-build: setup
	$(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

VIZ_PORT ?= 4141
viz: setup
	$(BIN)/kedro viz run --no-browser --port $(VIZ_PORT)

ipython: setup
	$(BIN)/kedro ipython

# MLflow 3 opens in its GenAI mode; the link printed first opens the experiment on its runs.
MLFLOW_STORE := sqlite:///mlruns/mlflow.db
mlflow-ui: setup
	@$(BIN)/python -c "import mlflow; e = mlflow.MlflowClient('$(MLFLOW_STORE)').get_experiment_by_name('attn_pipeline_$(DATASET)'); print('runs of attn_pipeline_$(DATASET): http://127.0.0.1:$(PORT)/#/experiments/' + (e.experiment_id if e else '<id>') + '/runs?workflowType=machine_learning')"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_STORE) --port $(PORT)

# A registered generator as a REST endpoint (POST /invocations: latent codes in, images out).
serve: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(MLFLOW_STORE)} $(BIN)/mlflow models serve -m "$(MODEL)" --env-manager local --host 127.0.0.1 --port $(PORT)

# The page to steer a registered generator by hand (default: $(MODEL), the entry's champion).
STEER_PORT ?= 7860
steer: setup
	$(BIN)/attn-steer --model "$(MODEL)" --dataset $(DATASET) --port $(STEER_PORT)
