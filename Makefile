# `make serve` and `make test` do all set-up themselves. `make serve` uses its own environment with the
# serving set alone (requirements-serve.lock: OpenVINO, no TensorFlow), as the Docker image does; everything
# else (tests, training, benchmarks) the full locked set in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml client/pyproject.toml | cksum | cut -d' ' -f1)
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed-$(shell cat requirements-serve.lock pyproject.toml | cksum | cut -d' ' -f1)
DATA ?= ../shared/data/cifar10-train-jpeg.tar.gz

.PHONY: install install-serve serve test lint train distill train-tutorial bench-train bench-serve clean

install: $(STAMP)

# The client is a distribution of its own (client/pyproject.toml): the tests and benchmarks use it.
$(STAMP): requirements.lock pyproject.toml client/pyproject.toml
	$(PYTHON) scripts/check_python.py $(PYTHON) --venv $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e ./client
	rm -f $(VENV)/.installed-* && touch $@

install-serve: $(SERVE_STAMP)

$(SERVE_STAMP): requirements-serve.lock pyproject.toml
	$(PYTHON) scripts/check_python.py $(PYTHON) --venv $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -r requirements-serve.lock
	$(SERVE_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(SERVE_VENV)/.installed-* && touch $@

serve: $(SERVE_STAMP)  ## serve the shipped model on http://127.0.0.1:8000 (docs at /docs); no TensorFlow installed
	$(SERVE_VENV)/bin/python -m app

# tests/test_web_page.py drives Debian's Chromium (never a downloaded browser; without it those tests fail).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

# tests/test_deployment.py runs deploy/nginx.conf in Debian's nginx in front of a real server.
NGINX ?= /usr/sbin/nginx

$(NGINX):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null

lint: $(STAMP)  ## ruff over every Python folder
	$(BIN)/ruff check app core training tests bench client scripts

test: lint $(CHROMIUM) $(NGINX)  ## lint and run the test suite
	$(BIN)/python -m pytest

# The run folder of `make train`: named here so the promotion that follows can find it.
ifndef RUN
RUN := runs/airbench-$(shell date -u +%Y%m%dT%H%M%SZ)
endif

train: $(STAMP)  ## train the airbench recipe (versions 3-8) on the shared JPEG set into $(RUN), then promote it
	$(BIN)/python -m training train --data $(DATA) --quiet --run-dir $(RUN)
	$(BIN)/python -m training promote $(RUN) --to models/cifar10

# One model folder, or several (an ensemble: the student learns their average).
TEACHERS ?= models/cifar10/4

distill: $(STAMP)  ## train airbench-wide-distill from the teacher(s) $(TEACHERS) into $(RUN), then promote it
	$(BIN)/python -m training train --data $(DATA) --recipe airbench-wide-distill $(foreach t,$(TEACHERS),--teacher $(t)) --quiet --run-dir $(RUN)
	$(BIN)/python -m training promote $(RUN) --to models/cifar10

train-tutorial: $(STAMP)  ## the tutorial's model, trained the tutorial's way, for comparison
	$(BIN)/python -m training train --data $(DATA) --recipe tutorial-rgb --epochs 3 --out models/tutorial-rgb --quiet

bench-train: $(STAMP)  ## training and inference images/s of a recipe's network (RECIPE=airbench)
	$(BIN)/python bench/train_speed.py --recipe $(or $(RECIPE),airbench)

bench-serve: $(STAMP)  ## the service under load beside today's, in-process ceilings, 2 workers x 2 threads (~13 min; wrk)
	command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
	$(BIN)/python bench/serve.py --model-dir $(or $(MODEL_DIR),models/cifar10) --alt-workers 2 --alt-env INFERENCE_THREADS=2 --json docs/bench-serve.json

clean:  ## environments, caches and run folders; a run folder git tracks (docs/training.md) stays
	rm -rf $(VENV) $(SERVE_VENV) .pytest_cache .ruff_cache
	[ ! -d runs ] || git clean -fdXq runs
