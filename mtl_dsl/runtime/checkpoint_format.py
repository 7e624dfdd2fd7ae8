"""The names and format tag of a checkpoint folder, shared by the local (``checkpoints.py``) and
the remote (``remote_checkpoints.py``) readers."""
from __future__ import annotations

FORMAT = "mtl-dsl-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "optimizer.safetensors"
META_FILE = "meta.json"
