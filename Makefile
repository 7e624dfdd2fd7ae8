# The two commands of a fresh machine (each creates ./.venv from requirements.lock on first use):
#   make train    the main job: train baseline_mt on the built-in synthetic scenes (ARGS="..." adds flags)
#   make test     the test suite, as CI runs it (ARGS="..." adds pytest arguments)
# `make env` only creates the environment; `make lock` regenerates requirements.lock.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: train test env lock

train: $(STAMP)
	$(VENV)/bin/mtl-dsl train baseline_mt $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash install.sh
	touch $@

# requirements.lock pins every package with its sha256 hash (tools/lock.py: pip's resolver and
# its installation report), the torch/torchvision pair included. After changing the dependencies
# in pyproject.toml: `make lock` keeps today's versions where it can, `make lock ARGS=--upgrade`
# resolves afresh.
lock:
	$(PYTHON) tools/lock.py $(ARGS)
