"""Proof by computation: the official checkpoints, converted with `mtl-dsl convert`, make the
compiled specs compute the official outputs (tests/fixtures/golden: made by running the official
code). NYUD-v2 at 425x560, and PASCAL-Context (its five tasks, and a reversed subset) at a small
odd size, 50x66; eval mode, float32, CPU; with cross-task fusion on, as compiled by default
(``tests/test_fusion.py`` holds the unfused model equal to it)."""
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


def official_file(fixture: str, folder: Path, root: Path = GOLDEN) -> Path:
    """The official state_dict of a fixture as one file (the shared HRNet tensors + the rest),
    checked key for key against the official key list. The PASCAL fixtures share NYUD's HRNet
    convolutions (the backbone is built first from the same seed)."""
    meta = json.loads((root / fixture / "meta.json").read_text())
    shared = load_file(str(GOLDEN / "shared_weights.safetensors"))
    if root != GOLDEN:
        shared = {k: v for k, v in shared.items() if k.startswith("backbone.")}
    tensors = {**shared, **load_file(str(root / fixture / "weights.safetensors"))}
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


PASCAL = GOLDEN.parent / "pascal"
PASCAL_SIZE = (50, 66)
PASCAL_CASES = [("baseline_mt", "baseline_mt", "pascal"), ("demt", "demt", "pascal"),
                ("tpanet", "tpanet", "pascal"), ("atrc_genotype", "atrc_pascal_hrnet18", "pascal"),
                ("demt_normals_semseg", "demt", "normals,semseg:21"),
                ("tpanet_normals_semseg", "tpanet", "normals,semseg:21"),
                ("atrc_genotype_normals_semseg", "atrc_pascal_hrnet18", "normals,semseg:21")]


@pytest.mark.parametrize("fixture, spec, tasks", PASCAL_CASES)
def test_official_outputs_on_pascal_context_and_a_reordered_subset(fixture, spec, tasks, tmp_path,
                                                                   capsys):
    """Another task set (semseg 21, human_parts 7, sal 2, normals 3, edge 1; ATRC's PASCAL
    genotype), another input size (odd, TPANet's spatial MLP at 221 positions: hidden width 221,
    as the released Mlp's `int(hidden) or in_features`), and the official task order of a subset
    (the official ModuleLists are indexed by it)."""
    meta = json.loads((PASCAL / fixture / "meta.json").read_text())
    assert meta["tasks"] == [t.split(":")[0] for t in tasks.split(",")] or tasks == "pascal"
    out = tmp_path / "converted"
    size = "x".join(map(str, PASCAL_SIZE))
    assert main(["convert", spec, str(official_file(fixture, tmp_path, PASCAL)), "--tasks", tasks,
                 "--input", size, "-o", str(out)]) == 0
    keys = meta["state_dict_keys_in_order"]
    unused = [k for k in keys if k.startswith("head.defor_mixers.") and k.endswith(".offset")]
    report = capsys.readouterr().out
    assert f"used:  {len(keys) - len(unused):>7,}" in report and "every model tensor got a value" in report

    model = compile_model(spec, tasks=tasks, input_size=PASCAL_SIZE)
    assert [t.name for t in model.ir.tasks] == meta["tasks"]
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    model.eval()
    images = load_file(str(PASCAL / "input.safetensors"))["images"]
    expected = load_file(str(PASCAL / fixture / "outputs.safetensors"))
    with torch.no_grad():
        outputs = model(images)
    checks = [(t, outputs[t]["final"], stats) for t, stats in meta["outputs"].items()]
    checks += [(f"{t}.aux", outputs[t]["aux"], stats) for t, stats in meta["aux_outputs"].items()]
    assert len(expected) == len(checks)
    for name, full, stats in checks:
        assert list(full.shape) == stats["shape_full"], name
        diff = (full[:, :, ::4, ::4] - expected[name]).abs().max().item()
        assert diff <= MAX_ABS, f"{name}: max abs difference {diff:.3g}"
        full = full.double()
        assert abs(full.abs().sum().item() - stats["full_sum_abs"]) <= REL * stats["full_sum_abs"]
        assert abs(full.sum().item() - stats["full_sum"]) <= REL * stats["full_sum_abs"]
