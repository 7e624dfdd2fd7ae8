"""The front-end: a spec made for one dataset (``profile nyud``) checks, compiles, trains and
predicts with no flags, and refuses any other task set with one error."""
from __future__ import annotations

import pytest

from mtl_dsl.api import check_spec, load_ir
from mtl_dsl.errors import SpecError
from mtl_dsl.tasks import PROFILES
from test_language import errors_of, write

DATASET_SPECS = [("atrc_nyud_hrnet18", "nyud"), ("atrc_nyud_hrnet48", "nyud"),
                 ("atrc_pascal_hrnet18", "pascal")]


@pytest.mark.parametrize("spec,profile", DATASET_SPECS)
def test_a_spec_made_for_a_dataset_checks_with_no_flags(spec, profile):
    ir = check_spec(spec).ir
    assert ir.profile == profile
    assert ir.tasks == list(PROFILES[profile].tasks)
    assert tuple(ir.input_size) == PROFILES[profile].input_size


@pytest.mark.parametrize("spec,profile", DATASET_SPECS)
def test_another_profile_is_refused_with_one_error(spec, profile):
    other = "pascal" if profile == "nyud" else "nyud"
    with pytest.raises(SpecError) as info:
        check_spec(spec, tasks=other)
    (d,) = info.value.diagnostics
    assert d.message.startswith(f"model '{spec}' is made for the task profile '{profile}' (")
    assert f"not for '{other}'" in d.message
    assert d.source_line.strip().startswith(f"profile {profile}")
    assert "leave out --tasks" in d.hint


def test_the_same_tasks_by_another_name_and_another_input_size_are_accepted():
    ir = load_ir("atrc_nyud_hrnet18", tasks="semseg:40,depth,normals,edge", input_size=(64, 96))
    assert [t.name for t in ir.tasks] == ["semseg", "depth", "normals", "edge"]
    assert tuple(ir.input_size) == (64, 96)
    with pytest.raises(SpecError) as info:
        load_ir("atrc_nyud_hrnet18", tasks="semseg:13,depth,normals,edge")
    assert len(info.value.diagnostics) == 1 and "(semseg:13, depth" in info.value.message


@pytest.mark.parametrize("spec, profile, tasks", [
    ("atrc_pascal_hrnet18", "pascal", "semseg:21,normals"),
    ("atrc_pascal_hrnet18", "pascal", "normals,semseg:21"),
    ("atrc_nyud_hrnet18", "nyud", "depth,edge")])
def test_a_selection_of_the_profiles_tasks_is_accepted_at_its_input_size(spec, profile, tasks):
    """As the official ATRC code builds a searched genotype for any of its tasks (in the order
    configured): github.com/brdav/atrc, src/model/heads/relationalcontext.py."""
    ir = load_ir(spec, tasks=tasks)
    assert [t.name for t in ir.tasks] == [t.split(":")[0] for t in tasks.split(",")]
    assert tuple(ir.input_size) == PROFILES[profile].input_size
    assert tuple(load_ir(spec, tasks=tasks, input_size=(64, 96)).input_size) == (64, 96)


@pytest.mark.parametrize("tasks", ["semseg:21,depth", "semseg:40,normals", "semseg:21,semseg:21"])
def test_tasks_outside_the_profile_are_still_refused(tasks):
    with pytest.raises(SpecError) as info:
        load_ir("atrc_pascal_hrnet18", tasks=tasks)
    assert len(info.value.diagnostics) == 1


PROFILED = """model m(dim = 4) {
  PROFILE
  x = conv_bn_act(images, dim, stride = 4)
  for t in tasks {
    out[t] = dense_head(x, task = t)
  }
}
"""


@pytest.mark.parametrize("statement,tasks,size", [
    ("profile nyud", ["semseg", "depth", "normals", "edge"], (425, 560)),
    ("profile pascal(input = [256, 320])", ["semseg", "human_parts", "sal", "normals", "edge"],
     (256, 320)),
    ('profile "depth,edge"(input = [64, 64],)', ["depth", "edge"], (64, 64)),
])
def test_the_profile_statement_sets_the_tasks_and_the_input_size(tmp_path, statement, tasks,
                                                                  size):
    ir = load_ir(write(tmp_path, PROFILED.replace("PROFILE", statement)))
    assert [t.name for t in ir.tasks] == tasks and tuple(ir.input_size) == size


@pytest.mark.parametrize("statement,message", [
    ("profile nyudd", "unknown task profile or task 'nyudd'"),
    ("profile nyud(input = [425])", "'input' is [height, width] in pixels"),
    ("profile nyud(input = [4, 560])", "'input' is [height, width] in pixels"),
    ("profile nyud(size = [64, 64])", "'profile' takes one setting, input = [height, width]"),
    ("profile nyud\n  profile nyud", "a model states its profile once"),
])
def test_profile_statement_mistakes(tmp_path, statement, message):
    e = errors_of(write(tmp_path, PROFILED.replace("PROFILE", statement)))
    assert len(e.diagnostics) == 1 and message in e.message, str(e)


def test_profile_belongs_at_the_top_of_a_model(tmp_path):
    spec = "block b(x) {\n  profile nyud\n  return x\n}\n" + PROFILED.replace(
        "PROFILE", "").replace("conv_bn_act(images", "conv_bn_act(b(images)")
    e = errors_of(write(tmp_path, spec), tasks="depth")
    assert len(e.diagnostics) == 1 and e.line == 2
    assert "'profile' is only allowed at the top of a model" in e.message


def test_a_spec_made_for_a_dataset_compiles_with_no_flags():
    from mtl_dsl.api import compile_model

    model = compile_model("atrc_nyud_hrnet18", input_size=(64, 64))
    same = compile_model("atrc_nyud_hrnet18", tasks="nyud", input_size=(64, 64))
    assert model.profile.name == "nyud" and model.output_names == same.output_names
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in same.parameters())


def test_a_spec_made_for_a_dataset_trains_with_no_tasks_given(tmp_path):
    from mtl_dsl.runtime.checkpoints import read_meta
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.launch import run_training

    cfg = load_config(overrides={
        "model": {"overrides": {"backbone": "resnet18", "dim": 8}},
        "dataset": {"length": 4, "val_length": 2},
        "training": {"iterations": 2, "batch_size": 2, "input_size": [32, 32], "augment": False,
                     "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 2,
                     "eval_batches": 1},
        "run": {"storage": str(tmp_path), "threads_per_worker": 1}})
    assert cfg.tasks is None and cfg.dataset.name == "synthetic"
    result = run_training("atrc_nyud_hrnet18", cfg, plain=True, progress=lambda record: None)
    assert result.run_dir.name == "atrc_nyud_hrnet18-nyud"
    assert set(result.history[-1]["losses"]) >= {"semseg", "depth", "normals", "edge"}
    meta = read_meta(result.checkpoint)
    assert meta["profile"]["name"] == "nyud" and meta["run_config"]["tasks"] == "nyud"


def test_a_spec_made_for_a_dataset_predicts_from_official_weights_with_no_tasks_given(tmp_path):
    from PIL import Image
    from test_golden import official_file

    from mtl_dsl.cli import main

    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    weights = official_file("atrc_genotype", tmp_path)
    assert main(["predict", "atrc_nyud_hrnet18", "--weights", str(weights), "--input", "64x64",
                 str(image), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"scene_{t}.png" for t in sorted(["semseg", "depth", "normals", "edge"])]


def test_a_sweep_of_a_spec_made_for_a_dataset_takes_its_profile(tmp_path):
    from mtl_dsl.runtime.config import load_config
    from mtl_dsl.runtime.sweep import run_sweep

    cfg = load_config(overrides={"run": {"storage": str(tmp_path), "name": "s"},
                                 "tune": {"search": {"dimm": "[8, 16]"}}})
    with pytest.raises(SpecError) as info:  # checked before any trial: the model's parameters
        run_sweep("atrc_nyud_hrnet18", cfg, plain=True, progress=lambda line: None)
    assert info.value.message == "model 'atrc_nyud_hrnet18' has no parameter 'dimm'"
