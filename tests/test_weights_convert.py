"""`mtl-dsl convert`, `eval`/`predict --weights` and `train --init`: the same official file gives
the same model by every path; released formats and wrappers; hybrids take the parts they import;
every refusal is one clear message, exit 2, no traceback, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mtl_dsl.api import compile_model
from mtl_dsl.cli import main
from mtl_dsl.errors import SpecError
from test_golden import official_file

BASELINE_ARGS = ["--tasks", "nyud", "--input", "96x128"]  # the HRNet baseline takes any size


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> Path:
    return official_file("baseline_mt", tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def demt_file(tmp_path_factory) -> Path:
    return official_file("demt", tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def converted(baseline_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "baseline"
    assert main(["convert", "baseline_mt", str(baseline_file), *BASELINE_ARGS, "-o", str(out)]) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- one file, every path ---------------------------------------------------------------------------

def test_the_folder_loads_strictly_into_compile_model(converted, baseline_file):
    model = compile_model("baseline_mt", tasks="nyud", input_size=(96, 128))
    state = load_file(str(converted / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    official = load_file(str(baseline_file))
    assert torch.equal(state["out.semseg.logits.weight"], official["head.final_logits.semseg.weight"].float())
    assert state["out.semseg.logits.weight"].dtype == torch.float32  # float16 file, float32 model


EVAL_DATA = ["--set", "dataset.val_length=2", "--set", "training.batch_size=2"]


def test_round_trip_eval_checkpoint_equals_eval_weights(converted, baseline_file, capsys):
    code, from_folder, _ = run(capsys, "eval", "baseline_mt", "--checkpoint", str(converted),
                               *EVAL_DATA)
    assert code == 0
    code, from_file, report = run(capsys, "eval", "baseline_mt", "--weights", str(baseline_file),
                                  *BASELINE_ARGS, *EVAL_DATA)
    assert code == 0 and "every model tensor got a value" in report
    assert from_folder.splitlines()[0].startswith("evaluated the checkpoint of step 0")
    assert from_file.splitlines()[0].startswith(f"evaluated the official weights {baseline_file}")
    table = from_folder.splitlines()[1:]
    assert any("semseg" in line for line in table) and table == from_file.splitlines()[1:]


def test_predict_from_the_file_and_from_the_folder_agree(converted, baseline_file, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray((torch.rand(70, 90, 3) * 255).byte().numpy()).save(image)
    assert main(["predict", "baseline_mt", "--checkpoint", str(converted), str(image),
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", "baseline_mt", "--weights", str(baseline_file), *BASELINE_ARGS,
                 str(image), "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"scene_{t}.png" for t in sorted(["semseg", "depth", "normals", "edge"])]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# -- formats as released ----------------------------------------------------------------------------

def _as(fmt: str, official: dict, folder: Path) -> Path:
    if fmt == "lightning":  # ATRC / DeMT / TPANet: PyTorch Lightning, the network as `model`
        path = folder / "last.ckpt"
        torch.save({"epoch": 99, "global_step": 40000, "pytorch-lightning_version": "1.2.1",
                    "state_dict": {**{f"model.{k}": v for k, v in official.items()},
                                   "criterion.edge_pos_weight": torch.tensor(0.8)},
                    "hyper_parameters": {"lr": 0.01}}, path)
    elif fmt == "ddp":  # InvPT: {'model': DistributedDataParallel state_dict, ...}
        path = folder / "checkpoint.pth.tar"
        torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 9}, path)
    elif fmt == "legacy":
        path = folder / "bare.pth"
        torch.save(official, path, _use_new_zipfile_serialization=False)
    else:  # bfloat16 safetensors
        path = folder / "bf16.safetensors"
        save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in official.items()},
                  str(path))
    return path


@pytest.mark.parametrize("fmt", ["lightning", "ddp", "legacy", "bf16"])
def test_released_formats_convert_to_the_same_model(fmt, converted, baseline_file, tmp_path, capsys):
    official = load_file(str(baseline_file))
    out = tmp_path / "out"
    code, report, err = run(capsys, "convert", "baseline_mt", str(_as(fmt, official, tmp_path)),
                            *BASELINE_ARGS, "-o", str(out))
    assert code == 0, err
    expected = load_file(str(converted / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        want = value.bfloat16().float() if fmt == "bf16" and value.is_floating_point() else value
        assert torch.equal(got[key], want), key
    if fmt == "lightning":
        assert "set aside: 1 entries" in report and "criterion.edge_pos_weight" in report


# -- hybrids take the parts they import -----------------------------------------------------------

def test_hybrid_init_from_the_part_it_imports(demt_file, tmp_path):
    from mtl_dsl.api import build_model
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.sampling import seed_model_init
    from mtl_dsl.weights.convert import load_init, prepare_init

    cfg = load_config(None, {"tasks": "nyud", "training": {"input_size": [64, 96]}})
    init = prepare_init("hybrid_demt_tpanet", cfg, f"demt={demt_file}")
    path = init.write(tmp_path / "init.safetensors")
    seed_model_init(cfg.training.seed)
    fresh = build_model("hybrid_demt_tpanet", **cfg.model_arguments()).state_dict()
    seed_model_init(cfg.training.seed)
    model = build_model("hybrid_demt_tpanet", **cfg.model_arguments())
    assert load_init(model, path) == len(init.state)
    state = model.state_dict()
    official = load_file(str(demt_file))

    demt_part = [k for k in state if k.startswith(("d.e.", "d.d."))]
    assert demt_part and sorted(init.state) == sorted(demt_part)
    assert torch.equal(state["d.e.linear.weight"], official["head.linear1.0.weight"].float())
    assert torch.equal(state["d.d.normals.m.0.spatial.0.get_offset.opt.bias"],
                       official["head.defor_mixers.2.blocks.0.3.fn.0.get_offset.opt.bias"].float())
    for key in state:
        if key not in demt_part:  # everything else keeps its seed-determined initialisation
            assert torch.equal(state[key], fresh[key]), key
    assert "nodes loaded (5): d.e, d.d.semseg.m.0, d.d.depth.m.0, d.d.normals.m.0, " \
           "d.d.edge.m.0" in init.report
    kept = init.report.split("nodes that kept their initialisation")[1]
    assert "feats" in kept and "y.f" in kept and "out.semseg" in kept
    assert "not part of 'demt'" in init.report and "backbone." in init.report


def test_train_init_part_end_to_end(demt_file, tmp_path, capsys):
    code, out, err = run(capsys, "train", "hybrid_demt_tpanet", "--init", f"demt={demt_file}",
                         "--plain", "--iterations", "1", "--tasks", "nyud", "--input", "64x96",
                         "--storage", str(tmp_path), "--set", "training.batch_size=1",
                         "--set", "dataset.length=2", "--set", "dataset.val_length=1")
    assert code == 0, err
    assert "the part imported as 'demt'" in out and "nodes loaded (5)" in out
    # DeMT's linear + LayerNorm (4 tensors) and one deformable mixer per task (18 tensors each)
    assert f"initialised {4 + 4 * 18} tensors from" in out


# -- refusals -----------------------------------------------------------------------------------------

class Hyper:
    lr = 0.01


def refused(capsys, out: Path, *argv: str) -> str:
    code, _, err = run(capsys, *argv, "-o", str(out))
    assert code == 2 and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing written
    return err


def test_refuses_a_pickle_with_a_custom_class(baseline_file, tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": load_file(str(baseline_file)), "args": Hyper()}, path)
    err = refused(capsys, tmp_path / "out", "convert", "baseline_mt", str(path), *BASELINE_ARGS)
    assert "refusing to load" in err and "Hyper`" in err and "would run code" in err


def test_refuses_a_truncated_file(baseline_file, tmp_path, capsys):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(baseline_file.read_bytes()[:100_000])
    err = refused(capsys, tmp_path / "out", "convert", "baseline_mt", str(path), *BASELINE_ARGS)
    assert "truncated or not a valid .safetensors file" in err


def test_refuses_another_models_checkpoint_naming_the_first_mismatches(demt_file, tmp_path, capsys):
    err = refused(capsys, tmp_path / "out", "convert", "baseline_mt", str(demt_file), *BASELINE_ARGS)
    first = err.splitlines()[0]
    # a weights file has no line to point at: no made-up position (it read `FILE:1:1: error`)
    assert first.startswith(f"{demt_file}: error: cannot load {demt_file.name} into 'baseline_mt'")
    assert "shape mismatch: official head.bottleneck.depth.bn.bias [33] -> model " \
           "out.depth.bottleneck.bn.bias [67] (and 23 more, e.g. official " in first
    outside = next(line for line in err.splitlines() if "not in the map" in line)
    assert outside.startswith("note: 120 official tensors not in the map 'official' (a checkpoint "
                              "of another model?): head.defor_mixers.0.blocks.0.0.bias")
    assert "get no value" not in err  # the mismatched tensors are not listed twice


def test_refuses_a_wrong_task_count_naming_the_head_and_both_shapes(baseline_file, tmp_path, capsys):
    err = refused(capsys, tmp_path / "out", "convert", "baseline_mt", str(baseline_file),
                  "--tasks", "pascal", "--input", "96x128")
    first = err.splitlines()[0]
    assert "the checkpoint has per-task tensors for 4 tasks (semseg, normals, depth, edge), the " \
           "model was compiled for 5 (semseg, human_parts, sal, normals, edge)" in first
    mismatch = next(line for line in err.splitlines() if "shape mismatch" in line)
    assert "official head.final_logits.semseg.weight [40, 67, 1, 1] -> model " \
           "out.semseg.logits.weight [21, 67, 1, 1]" in mismatch


def test_missing_tensors_need_allow_partial_and_then_keep_their_initialisation(
        baseline_file, tmp_path, capsys):
    tasks = ["--tasks", "semseg:40,depth,normals,edge,sal", "--input", "96x128"]
    err = refused(capsys, tmp_path / "refused", "convert", "baseline_mt", str(baseline_file), *tasks)
    assert "model tensors get no value: out.sal.bottleneck.conv.weight" in err
    assert "--allow-partial" in err
    out = tmp_path / "partial"
    code, report, _ = run(capsys, "convert", "baseline_mt", str(baseline_file), *tasks,
                          "--allow-partial", "-o", str(out))
    assert code == 0 and "kept their initialisation: 8 model tensors" in report
    assert "nodes that kept their initialisation (1): out.sal" in report
    torch.manual_seed(0)
    fresh = compile_model("baseline_mt", tasks="semseg:40,depth,normals,edge,sal",
                          input_size=(96, 128)).state_dict()
    state = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(state[k], fresh[k]) for k in state if k.startswith("out.sal."))
    assert json.loads((out / "meta.json").read_text())["init_seed"] == 0


def test_refuses_to_overwrite_and_names_an_unknown_map(baseline_file, converted, tmp_path, capsys):
    code, _, err = run(capsys, "convert", "baseline_mt", str(baseline_file), *BASELINE_ARGS,
                       "-o", str(converted))
    assert code == 2 and "output folder exists" in err
    err = refused(capsys, tmp_path / "out", "convert", "baseline_mt", str(baseline_file),
                  *BASELINE_ARGS, "--map", "offical")
    assert "has no weights map 'offical' (its maps: 'official', 'upernet')" in err



def test_an_output_folder_that_cannot_be_made_is_one_error(baseline_file, tmp_path, capsys):
    """-o under a file or in a place that cannot be written was a FileExistsError /
    FileNotFoundError traceback after the whole conversion."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for out, message in [(blocker / "sub", f"{blocker / 'sub'}: error: cannot write "
                                           f"{blocker / 'sub'}: {blocker} is a file, not a folder"),
                         (Path("/proc/mtl-dsl-out"), "/proc/mtl-dsl-out: error: cannot write "
                                                      "/proc/mtl-dsl-out: "),
                         (blocker, f"{blocker}: error: output path (a file) exists: {blocker}")]:
        code, _, err = run(capsys, "convert", "baseline_mt", str(baseline_file), *BASELINE_ARGS,
                           "-o", str(out))
        assert code == 2 and "Traceback" not in err, err
        assert err.splitlines()[0].startswith(message), err
    assert blocker.read_text() == "" and sorted(tmp_path.iterdir()) == [blocker]

def test_train_init_takes_a_checkpoint_folder_of_the_same_graph(converted, tmp_path):
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.weights.convert import prepare_init

    cfg = load_config(None, {"tasks": "nyud", "training": {"input_size": [96, 128]}})
    init = prepare_init("baseline_mt", cfg, str(converted))
    assert init.write(tmp_path / "unused.safetensors") == converted / "model.safetensors"
    other = load_config(None, {"tasks": "semseg:40,depth", "training": {"input_size": [96, 128]}})
    with pytest.raises(SpecError, match="does not match the spec's graph"):
        prepare_init("baseline_mt", other, str(converted))
    with pytest.raises(SpecError, match="a checkpoint folder initialises the whole model"):
        prepare_init("baseline_mt", cfg, f"demt={converted}")
