"""How closely the compiled reference specs reproduce the official implementations' outputs.

For each golden fixture (tests/fixtures/golden: weights, an input and the outputs of the official
code; NYUD-v2 at 425x560, PASCAL-Context and a reversed subset of it at 50x66) this loads the official state_dict through the spec's `weights official`
map, runs the input in eval mode (float32, CPU) and prints the largest absolute difference to the
stored official outputs (subsampled [:, :, ::4, ::4]) and the relative error of the full output's
sum of |y|, per model, over all tasks (and ATRC's auxiliary predictions where stored); with every node run on its own (fusion off) and with
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
CASES = [("nyud", "baseline_mt", "baseline_mt", "nyud"), ("nyud", "demt", "demt", "nyud"),
         ("nyud", "tpanet", "tpanet", "nyud"), ("nyud", "atrc_genotype", "atrc_nyud_hrnet18", "nyud"),
         ("pascal", "baseline_mt", "baseline_mt", "pascal"), ("pascal", "demt", "demt", "pascal"),
         ("pascal", "tpanet", "tpanet", "pascal"),
         ("pascal", "atrc_genotype", "atrc_pascal_hrnet18", "pascal"),
         ("pascal", "demt_normals_semseg", "demt", "normals,semseg:21"),
         ("pascal", "tpanet_normals_semseg", "tpanet", "normals,semseg:21"),
         ("pascal", "atrc_genotype_normals_semseg", "atrc_pascal_hrnet18", "normals,semseg:21")]


def official_state(dataset: str, fixture: str) -> dict[str, torch.Tensor]:
    """The shared HRNet convolutions (NYUD's file; the PASCAL fixtures take its backbone.*) + the rest."""
    shared = load_file(str(GOLDEN / "shared_weights.safetensors"))
    if dataset != "nyud":
        shared = {k: v for k, v in shared.items() if k.startswith("backbone.")}
    return {**shared, **load_file(str(GOLDEN.parent / dataset / fixture / "weights.safetensors"))}


def reproduce(dataset: str, fixture: str, spec: str, tasks: str,
              folder: Path) -> dict[bool, tuple[float, float]]:
    """(max abs difference, sum|y| relative error) with fusion off (False) and on (True)."""
    from mtl_dsl.api import compile_model
    from mtl_dsl.weights.convert import apply_file

    root = GOLDEN.parent / dataset
    meta = json.loads((root / fixture / "meta.json").read_text())
    path = folder / f"{dataset}_{fixture}.safetensors"
    save_file(official_state(dataset, fixture), str(path))
    model = compile_model(spec, tasks=tasks, input_size=tuple(meta["input_size"]))
    apply_file(model, path)
    model.eval()
    images = load_file(str(root / "input.safetensors"))["images"]
    expected = load_file(str(root / fixture / "outputs.safetensors"))
    result = {}
    for fused in (False, True):
        model.set_fusion(fused)
        with torch.no_grad():
            outputs = model(images)
        worst, worst_sum = 0.0, 0.0
        checks = [(t, outputs[t]["final"], stats) for t, stats in meta["outputs"].items()]
        checks += [(f"{t}.aux", outputs[t]["aux"], stats)
                   for t, stats in meta.get("aux_outputs", {}).items()]
        for name, full, stats in checks:
            worst = max(worst, (full[:, :, ::4, ::4] - expected[name]).abs().max().item())
            total = full.double().abs().sum().item()
            worst_sum = max(worst_sum, abs(total - stats["full_sum_abs"]) / stats["full_sum_abs"])
        result[fused] = (worst, worst_sum)
    return result


def main() -> int:
    sys.path.insert(0, str(ROOT))
    print(f"{'spec':<20} {'tasks':<18} {'size':>7} {'official code':<28} {'fusion':>6} "
          f"{'max |y - official|':>19} {'sum|y| rel. error':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, fixture, spec, tasks in CASES:
            meta = json.loads((GOLDEN.parent / dataset / fixture / "meta.json").read_text())
            source = f"{meta['repo']} {meta['commit'][:8]}"
            size = "x".join(map(str, meta["input_size"]))
            for fused, (worst, worst_sum) in reproduce(dataset, fixture, spec, tasks, Path(tmp)).items():
                print(f"{spec:<20} {tasks:<18} {size:>7} {source:<28} {'on' if fused else 'off':>6} "
                      f"{worst:>19.2g} {worst_sum:>18.2g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
