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

# requirements.lock pins every package with its sha256 hashes (pip-tools' pip-compile), the
# torch/torchvision pair included; regenerate it after changing the dependencies in pyproject.toml.
lock:
	$(PYTHON) -m venv /tmp/mtl-dsl-lock-venv && /tmp/mtl-dsl-lock-venv/bin/pip install -q pip-tools
	/tmp/mtl-dsl-lock-venv/bin/pip-compile --generate-hashes --extra test --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
