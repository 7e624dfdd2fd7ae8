"""`pretrained = "timm"`: backbones start from timm's own pretrained weights, through the Hugging
Face hub cache (HF_HOME, HF_HUB_OFFLINE=1), never the network in tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SPEC = """
model tiny(backbone = "test_vit") {
  feats = backbone(backbone, levels = [6], pretrained = "timm")
  x = upsample_concat(feats)
  for t in tasks {
    out[t] = conv_bn_act(x, channels(t), kernel = 1, norm = "none", act = "none")
  }
}
"""

CHECK = """
import json, sys, torch
from safetensors.torch import load_file
from mtl_dsl.api import compile_model
model = compile_model(sys.argv[1], tasks="semseg:3", input_size=(32, 32))
expected = load_file(sys.argv[2])
body = model.feats.body.state_dict()
same = [k for k in body if k in expected and torch.equal(body[k], expected[k])]
print(json.dumps({"same": len(same), "blocks": sum(k.startswith("blocks.") for k in body),
                  "block_keys_equal": all(torch.equal(body[k], expected[k])
                                          for k in body if k.startswith("blocks."))}))
"""


def _hub_cache(root: Path, repo: str, state: dict) -> Path:
    """A Hugging Face hub cache folder as huggingface_hub lays it out, holding one snapshot."""
    commit = "1f0e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot / "model.safetensors"


def _env(hf_home: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    return env


def test_timm_pretrained_weights_come_from_the_offline_hub_cache(tmp_path):
    import timm

    reference = timm.create_model("test_vit", pretrained=False)
    torch.manual_seed(3)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in reference.state_dict().items()}
    weights = _hub_cache(tmp_path / "hf", reference.pretrained_cfg["hf_hub_id"], state)
    spec = tmp_path / "tiny.mtl"
    spec.write_text(SPEC)
    proc = subprocess.run([sys.executable, "-c", CHECK, str(spec), str(weights)],
                          capture_output=True, text=True, env=_env(tmp_path / "hf"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # every transformer block holds the cached file's values, not a random initialisation
    assert result["blocks"] > 0 and result["block_keys_equal"] and result["same"] >= result["blocks"]


def test_a_model_missing_from_the_offline_cache_is_one_clear_error(tmp_path):
    spec = tmp_path / "tiny.mtl"
    spec.write_text(SPEC)
    proc = subprocess.run([sys.executable, "-m", "mtl_dsl.cli", "compile", str(spec),
                           "--tasks", "semseg:3", "--input", "32x32", "--no-flops"],
                          capture_output=True, text=True, env=_env(tmp_path / "empty"), timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "cannot load timm's pretrained weights for 'test_vit'" in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr and str(tmp_path / "empty") in proc.stderr
