#!/usr/bin/env bash
# Sets up everything mtl-dsl needs in ./.venv: a matching torch/torchvision pair first (so the
# resolver never mixes versions), then the package with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.2"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, torchvision, timm, ray, mtl_dsl; print('mtl-dsl ready:', 'torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| ray', ray.__version__)"
