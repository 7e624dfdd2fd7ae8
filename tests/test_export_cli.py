"""``mtl-dsl export``: a checkpoint in, a checked file and its description out; mistakes exit 2
without a traceback, a failed check exits 1 and leaves no file."""
from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from mtl_dsl.api import compile_model
from mtl_dsl.cli import main
from mtl_dsl.runtime.checkpoints import save_checkpoint
from mtl_dsl.runtime.config import load_config
from mtl_dsl.tasks import IMAGENET_MEAN, IMAGENET_STD
from test_golden import official_file

TASKS, SIZE = "semseg:3,depth", (32, 48)


def trained_checkpoint(path, spec: str, overrides: dict, tasks: str = TASKS, size=SIZE):
    """A checkpoint as training writes it, with weights no fresh model has."""
    config = load_config(None, overrides={"tasks": tasks, "training": {"input_size": list(size)},
                                          "model": {"overrides": overrides}}, check_paths=False)
    torch.manual_seed(1)
    model = compile_model(spec, tasks=tasks, input_size=size, overrides=overrides)
    with torch.no_grad():
        for p in model.parameters():  # every weight changed by about 10 %
            p.mul_(1 + 0.1 * torch.randn_like(p))
    save_checkpoint(path, model.state_dict(), {}, {"step": 3, "run_config": config.dump(),
                                                   "spec": spec})
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "step_3"
    return path, trained_checkpoint(path, "baseline_mt", {"backbone": "resnet18"})


def test_export_writes_a_checked_onnx_file_of_the_checkpoint(checkpoint, tmp_path, capsys):
    path, trained = checkpoint
    out = tmp_path / "deploy" / "baseline.onnx"
    assert main(["export", "baseline_mt", "--checkpoint", str(path), "-o", str(out),
                 "--dynamic-batch"]) == 0
    printed = capsys.readouterr().out
    assert "input 'images' float32 Nx3x32x48, RGB in [0, 1], normalised inside the graph" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().endswith(" ok")]
    assert [(r[0], r[1]) for r in rows] == [("semseg", "1"), ("depth", "1"), ("semseg", "3"),
                                            ("depth", "3")]
    assert all(float(r[3]) <= 1e-4 for r in rows)
    described = json.loads((tmp_path / "deploy" / "baseline.onnx.json").read_text())
    assert described["weights"] == str(path) and described["input"]["shape"][0] == "batch"
    images = torch.rand(2, 3, *SIZE)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inside = json.loads(session.get_modelmeta().custom_metadata_map["mtl_dsl"])
    assert inside["outputs"] == described["outputs"] and inside["input"] == described["input"]
    semseg, depth = session.run(None, {"images": images.numpy()})
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = trained((images - mean) / std)  # the checkpoint's weights, not a fresh model's
    assert float((torch.from_numpy(semseg) - expected["semseg"]["final"]).abs().max()) <= 1e-4
    assert float((torch.from_numpy(depth) - expected["depth"]["final"]).abs().max()) <= 1e-4


def test_input_flag_compiles_another_size(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "m.pt2"
    assert main(["export", "baseline_mt", "--checkpoint", str(path), "-o", str(out),
                 "--input", "64x40"]) == 0
    assert "input 'images' float32 1x3x64x40" in capsys.readouterr().out
    program = torch.export.load(str(out))
    assert dict(program.module()(torch.rand(1, 3, 64, 40)))["depth"].shape == (1, 1, 64, 40)


def test_failed_check_exits_1_and_removes_the_file(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "m.pt2"
    code = main(["export", "baseline_mt", "--checkpoint", str(path), "-o", str(out), "--fp16",
                 "--tolerance", "1e-9"])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED" in captured.out and "differs from the eager model by" in captured.err
    assert not out.exists() and not (tmp_path / "m.pt2.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["-o", "model.bin"], "cannot tell the format from 'model.bin'"),
    (["-o", "m.pt2", "--tolerance", "0"], "the tolerance must be positive"),
    (["-o", "m.pt2", "--set", "dim=8"], "does not match the spec's graph"),
    (["-o", "m.pt2", "--tasks", "semseg:4,depth"], "does not match the spec's graph"),
    (["-o", "m.pt2", "--allow-partial"], "--allow-partial only apply with --weights"),
])
def test_mistakes_exit_2_with_one_message(checkpoint, tmp_path, monkeypatch, capsys, flags,
                                          message):
    path, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    assert main(["export", "baseline_mt", "--checkpoint", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err
    assert not list(tmp_path.glob("m.*"))



def test_an_output_path_that_cannot_be_written_is_one_error_before_compiling(
        checkpoint, tmp_path, monkeypatch, capsys):
    """A folder, a path under a file, an unwritable place, or a suffix that contradicts --format:
    one located -o / --format error, exit 2, no traceback (the exporters' own OSError was one)."""
    path, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    for flags, message in [
            (["-o", "adir", "--format", "onnx"], "-o: error: adir is a folder, not a file"),
            (["-o", "afile/sub/m.pt2"], "-o: error: cannot write afile/sub/m.pt2: afile is a "
                                        "file, not a folder"),
            (["-o", "/proc/m.pt2"], "-o: error: cannot write /proc/m.pt2: "),
            (["-o", "m.onnx", "--format", "pt2"], "--format: error: --format pt2 but -o names "
                                                  "a .onnx file: 'm.onnx'")]:
        assert main(["export", "baseline_mt", "--checkpoint", str(path), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (flags, err)
        assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not list(tmp_path.glob("m.*")) and not list((tmp_path / "adir").iterdir())


def test_a_checkpoint_of_another_spec_names_the_spec_it_was_written_for(checkpoint, tmp_path,
                                                                        monkeypatch, capsys):
    """The key lists alone leave a user guessing; the checkpoint's meta.json says its spec."""
    path, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    assert main(["export", "demt", "--checkpoint", str(path), "-o", "m.pt2"]) == 2
    err = capsys.readouterr().err
    assert "does not match the spec's graph: missing" in err
    assert ("hint: it was written for the model 'baseline_mt' of the spec 'baseline_mt', not "
            "'demt'") in err
    assert main(["export", "baseline_mt", "--checkpoint", str(path), "-o", "m.pt2", "--set",
                 "dim=8"]) == 2
    assert "hint: it was written" not in capsys.readouterr().err  # the same spec: no such hint
    assert not list(tmp_path.glob("m.*"))

def test_export_of_an_official_checkpoint_file(tmp_path, capsys):
    """--weights: the official file read through the spec's weights map, as `eval --weights`; the
    exported program holds the file's tensors."""
    official = official_file("baseline_mt", tmp_path)
    out = tmp_path / "official.pt2"
    assert main(["export", "baseline_mt", "--weights", str(official), "--tasks", "nyud",
                 "--input", "64x96", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "every model tensor got a value" in captured.err  # the conversion report
    assert "input 'images' float32 1x3x64x96" in captured.out
    program = torch.export.load(str(out))
    tensors = load_file(str(official))
    assert torch.equal(program.state_dict["model.out.semseg.logits.weight"],
                       tensors["head.final_logits.semseg.weight"].float())
    described = json.loads((tmp_path / "official.pt2.json").read_text())
    assert described["weights"].startswith(f"{official} (official, sha256 ")
    assert [o["name"] for o in described["outputs"]] == ["semseg", "depth", "normals", "edge"]
    # a file that does not fit the compiled graph is refused before anything is written
    assert main(["export", "baseline_mt", "--weights", str(official), "--tasks", "semseg,depth",
                 "-o", str(tmp_path / "wrong.pt2")]) == 2
    assert "give --tasks to match" in capsys.readouterr().err
    assert not (tmp_path / "wrong.pt2").exists()


def test_missing_export_extra_is_a_usage_error(checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = checkpoint
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert main(["export", "baseline_mt", "--checkpoint", str(path), "-o",
                 str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export needs onnxruntime" in err and "pip install 'mtl-dsl[export]'" in err


def test_unexportable_node_exits_2_without_traceback(tmp_path):
    path = tmp_path / "search" / "step_3"
    trained_checkpoint(path, "atrc", {"backbone": "resnet18", "dim": 16}, size=(32, 32))
    r = subprocess.run([sys.executable, "-m", "mtl_dsl.cli", "export", "atrc", "--checkpoint",
                        str(path), "-o", str(tmp_path / "m.onnx")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("atrc.mtl:") and "cannot export node 'res.c.semseg.semseg'" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
