"""Proof by computation: the official checkpoints, converted with `mtl-dsl convert`, make the
compiled specs compute the official outputs (tests/fixtures/golden: made by running the official
code). NYUD-v2, 425x560, eval mode, float32, CPU; with cross-task fusion on, as compiled by
default (``tests/test_fusion.py`` holds the unfused model equal to it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mtl_dsl.api import compile_model
from mtl_dsl.cli import main

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "nyud"
CASES = [("baseline_mt", "baseline_mt"), ("demt", "demt"), ("tpanet", "tpanet"),
         ("atrc_genotype", "atrc_nyud_hrnet18")]
MAX_ABS = 1e-5  # subsampled outputs; a faithful float32 implementation lands near 1e-7
REL = 1e-5  # full-tensor sums


def official_file(fixture: str, folder: Path) -> Path:
    """The official state_dict of a fixture as one file (the shared HRNet tensors + the rest),
    checked key for key against the official key list."""
    meta = json.loads((GOLDEN / fixture / "meta.json").read_text())
    tensors = {**load_file(str(GOLDEN / "shared_weights.safetensors")),
               **load_file(str(GOLDEN / fixture / "weights.safetensors"))}
    assert sorted(tensors) == sorted(meta["state_dict_keys_in_order"])
    path = folder / f"{fixture}.safetensors"
    save_file({k: tensors[k] for k in meta["state_dict_keys_in_order"]}, str(path))
    return path


@pytest.mark.parametrize("fixture, spec", CASES)
def test_converted_official_weights_reproduce_the_official_outputs(fixture, spec, tmp_path, capsys):
    meta = json.loads((GOLDEN / fixture / "meta.json").read_text())
    out = tmp_path / "converted"
    assert main(["convert", spec, str(official_file(fixture, tmp_path)), "--tasks", "nyud",
                 "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"used:  {len(meta['state_dict_keys_in_order']) - (4 if fixture == 'demt' else 0):>7,}" \
        in report and "every model tensor got a value" in report

    model = compile_model(spec, tasks="nyud")
    assert model.fused and model.fusion.groups  # cross-task fusion on (the default): issue 13
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    model.eval()
    images = load_file(str(GOLDEN / "input.safetensors"))["images"]
    expected = load_file(str(GOLDEN / fixture / "outputs.safetensors"))
    with torch.no_grad():
        outputs = model(images)
    for task, stats in meta["outputs"].items():
        full = outputs[task]["final"]
        assert list(full.shape) == stats["shape_full"]
        diff = (full[:, :, ::4, ::4] - expected[task]).abs().max().item()
        assert diff <= MAX_ABS, f"{task}: max abs difference {diff:.3g}"
        full = full.double()
        assert abs(full.abs().sum().item() - stats["full_sum_abs"]) <= REL * stats["full_sum_abs"]
        assert abs(full.sum().item() - stats["full_sum"]) <= REL * stats["full_sum_abs"]


@pytest.mark.parametrize("fixture, spec", CASES[1:2])
def test_the_converted_folder_records_what_it_came_from(fixture, spec, tmp_path):
    import hashlib

    source = official_file(fixture, tmp_path)
    out = tmp_path / "converted"
    assert main(["convert", spec, str(source), "--tasks", "nyud", "-o", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    spec_file = Path(meta["spec_file"])
    assert meta["spec_source"] == spec_file.read_text()
    assert meta["spec_sha256"] == hashlib.sha256(spec_file.read_bytes()).hexdigest()
    assert meta["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    model = compile_model(spec, tasks="nyud")
    assert meta["graph_hash"] == model.ir.graph_hash()
    transfers = meta["correspondence"]["transfers"]
    fused = next(t for t in transfers if t["official"] == "head.task_fusion.in_proj_weight")
    assert fused["model"] == [f"f.f.task_fusion.{p}_proj.weight" for p in "qkv"]
    line = int(fused["entry"].rsplit(":", 1)[1])  # the spec entry that decided it
    assert fused["op"] == "split" and '"head.task_fusion"' in meta["spec_source"].split("\n")[line - 1]
    assert sorted(meta["correspondence"]["unused"]) == [
        f"head.defor_mixers.{i}.blocks.0.3.fn.0.offset" for i in range(4)]
