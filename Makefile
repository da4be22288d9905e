# AdapterLab: `make run` (set up and start the app), `make test` (set up and run every test).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
MODELS_DIR ?= $(or $(ADAPTERLAB_MODELS_DIR),models)
CHROMIUM ?= /usr/bin/chromium
REDIS_SERVER ?= /usr/bin/redis-server

.PHONY: run test setup dev model lint bench clean

run: setup model
	$(PY) app.py --models-dir $(MODELS_DIR)

test: setup dev model
	ADAPTERLAB_MODELS_DIR=$(abspath $(MODELS_DIR)) $(PY) -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-nodeps.txt
	touch $@

dev: setup $(VENV)/.dev-installed
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@test -x $(REDIS_SERVER) || { echo "installing Debian's redis-server for the shared-queue tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

$(VENV)/.dev-installed: requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

# Converts the bundled GGUF into a plain model folder once (~30 s); later runs skip it.
model: setup
	$(PY) -m finetune.models --models-dir $(MODELS_DIR)

lint: dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup model
	$(PY) bench/throughput.py --models-dir $(MODELS_DIR)
	$(PY) bench/dataset_load.py --models-dir $(MODELS_DIR)
	$(PY) bench/methods.py --models-dir $(MODELS_DIR)
	$(PY) bench/job_queue.py
	$(PY) bench/playground.py --models-dir $(MODELS_DIR)
	$(PY) bench/packing.py --models-dir $(MODELS_DIR)
	$(PY) bench/quality.py --models-dir $(MODELS_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
