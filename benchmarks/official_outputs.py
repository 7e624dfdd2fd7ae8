"""How closely the compiled reference specs reproduce the official implementations' outputs.

For each golden fixture (tests/fixtures/golden: weights, an input and the outputs of the official
code, NYUD-v2 at 425x560) this loads the official state_dict through the spec's `weights official`
map, runs the input in eval mode (float32, CPU) and prints the largest absolute difference to the
stored official outputs (subsampled [:, :, ::4, ::4]) and the relative error of the full output's
sum of |y|, per model, over all tasks; with every node run on its own (fusion off) and with
cross-task fusion on (the default). Usage: python benchmarks/official_outputs.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "nyud"
CASES = [("baseline_mt", "baseline_mt"), ("demt", "demt"), ("tpanet", "tpanet"),
         ("atrc_genotype", "atrc_nyud_hrnet18")]


def reproduce(fixture: str, spec: str, folder: Path) -> dict[bool, tuple[float, float]]:
    """(max abs difference, sum|y| relative error) with fusion off (False) and on (True)."""
    from mtl_dsl.api import compile_model
    from mtl_dsl.weights.convert import apply_file

    meta = json.loads((GOLDEN / fixture / "meta.json").read_text())
    official = {**load_file(str(GOLDEN / "shared_weights.safetensors")),
                **load_file(str(GOLDEN / fixture / "weights.safetensors"))}
    path = folder / f"{fixture}.safetensors"
    save_file(official, str(path))
    model = compile_model(spec, tasks="nyud")
    apply_file(model, path)
    model.eval()
    images = load_file(str(GOLDEN / "input.safetensors"))["images"]
    expected = load_file(str(GOLDEN / fixture / "outputs.safetensors"))
    result = {}
    for fused in (False, True):
        model.set_fusion(fused)
        with torch.no_grad():
            outputs = model(images)
        worst, worst_sum = 0.0, 0.0
        for task, stats in meta["outputs"].items():
            full = outputs[task]["final"]
            worst = max(worst, (full[:, :, ::4, ::4] - expected[task]).abs().max().item())
            total = full.double().abs().sum().item()
            worst_sum = max(worst_sum, abs(total - stats["full_sum_abs"]) / stats["full_sum_abs"])
        result[fused] = (worst, worst_sum)
    return result


def main() -> int:
    sys.path.insert(0, str(ROOT))
    print(f"{'spec':<20} {'official code':<28} {'fusion':>6} {'max |y - official|':>19} "
          f"{'sum|y| rel. error':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for fixture, spec in CASES:
            meta = json.loads((GOLDEN / fixture / "meta.json").read_text())
            source = f"{meta['repo']} {meta['commit'][:8]}"
            for fused, (worst, worst_sum) in reproduce(fixture, spec, Path(tmp)).items():
                print(f"{spec:<20} {source:<28} {'on' if fused else 'off':>6} {worst:>19.2g} "
                      f"{worst_sum:>18.2g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
