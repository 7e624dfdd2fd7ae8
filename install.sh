#!/usr/bin/env bash
# Creates ./.venv with exactly the packages of requirements.lock (versions and sha256 hashes
# pinned, the torch/torchvision pair included, nothing resolved afresh), then installs mtl-dsl
# itself in editable mode. `make train` and `make test` run it on first use; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# The lock holds CPython 3.11 wheels (its header says so): another Python needs its own lock.
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "requirements.lock is for CPython 3.11; with this Python run `make lock` first")'
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# --require-hashes: every wheel must match the lock; --no-deps: the lock is the whole environment.
"$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps -r requirements.lock
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c "import torch, torchvision, timm, ray, mtl_dsl; print('mtl-dsl ready:', 'torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| ray', ray.__version__)"
