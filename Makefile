# Every target installs what it needs into .venv first (CI runs on a fresh clone).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PROFILE ?= quick
BACKBONE ?=
DATA ?=

.PHONY: venv test lint reproduce bench presentation demo screenshot clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest

# make reproduce [PROFILE=quick] [BACKBONE=...] [DATA=...]: notebooks 01-05, then the results table.
reproduce: $(STAMP)
	$(PY) -m cifar10_transfer reproduce --profile $(PROFILE) \
		$(if $(BACKBONE),--backbone $(BACKBONE)) $(if $(DATA),--data $(DATA))

# make presentation [PROFILE=quick]: the PDF deck from results/<profile>/ and images/<profile>/.
presentation: $(STAMP)
	$(PY) -m cifar10_transfer.slides --profile $(PROFILE)

RUN ?= runs/$(PROFILE)/finetune
# make demo [RUN=...] [DATA=...]: export RUN to deploy/ and serve it on http://127.0.0.1:7860
demo: $(STAMP)
	$(PY) -m cifar10_transfer demo $(RUN) --out deploy $(if $(DATA),--data $(DATA))

# Re-take images/demo.png with a real prediction of RUN in headless Chromium.
screenshot: $(STAMP)
	$(PY) tests/test_demo_e2e.py $(RUN) --data $(or $(DATA),../shared/data/cifar10-jpeg.tar.gz) --out images/demo.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
