"""Run-config validation: every mistake is one line naming the key (dotted) or the path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtl_dsl.errors import SpecError
from mtl_dsl.runtime.config import (OFFICIAL_LOSS_WEIGHTS, available_recipes, load_config,
                                    parse_set)


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    return message


def test_unknown_key_names_the_dotted_path_and_line(tmp_path):
    message = _error(tmp_path, "dataset:\n  name: synthetic\noptimizer:\n  name: sgd\n  lrr: 0.1\n")
    assert message.startswith(f"{tmp_path / 'run.yaml'}:5:3: error:")
    assert "unknown key 'optimizer.lrr'" in message and "did you mean 'lr'" in message


def test_wrong_type_names_the_key_and_value(tmp_path):
    message = _error(tmp_path, "training:\n  iterations: lots\n")
    assert ":2:3:" in message and "'training.iterations'" in message and "'lots'" in message


def test_missing_dataset_folder_names_the_path(tmp_path):
    missing = tmp_path / "no" / "NYUDv2"
    message = _error(tmp_path, f"dataset:\n  name: nyud\n  root: {missing}\n")
    assert f"dataset folder not found: {missing}" in message and ":3:3:" in message


def test_dataset_without_root_and_unknown_task_weight(tmp_path):
    assert "missing key 'dataset.root'" in _error(tmp_path, "dataset: {name: pascal}\n")
    message = _error(tmp_path, "loss:\n  weights: {semsg: 2}\n")
    assert "unknown key 'loss.weights.semsg'" in message and "semseg" in message


def test_tasks_not_labelled_by_the_dataset(tmp_path):
    root = tmp_path / "NYUD"
    root.mkdir()
    message = _error(tmp_path, f"dataset: {{name: nyud, root: {root}}}\ntasks: semseg,sal\n")
    assert "key 'tasks'" in message and "sal" in message


def test_invalid_yaml_and_non_mapping(tmp_path):
    assert "invalid YAML" in _error(tmp_path, "training: [1, 2\n")
    assert "mapping" in _error(tmp_path, "- 1\n- 2\n")


def test_set_overrides_dotted_keys_and_report_bad_ones():
    cfg = load_config(overrides=parse_set(["optimizer.lr=0.05", "training.input_size=[32, 48]",
                                           "tasks=semseg,depth"]))
    assert cfg.optimizer.lr == 0.05 and cfg.input_size() == (32, 48)
    assert cfg.profile().task_names == ["semseg", "depth"]
    # the flag as typed, not a made-up position "--set:1:1", and the section's keys
    with pytest.raises(SpecError, match=r"^--set training.foo=1: error: unknown key 'training.foo' "
                                        r"\(the keys of 'training' are iterations, batch_size, .*\)$"):
        load_config(overrides=parse_set(["training.foo=1"]))
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_set(["lr"])
    assert load_config(overrides=parse_set(["run.threads_per_worker=3"])).run.threads_per_worker == 3
    with pytest.raises(SpecError, match="run.threads_per_worker"):
        load_config(overrides=parse_set(["run.threads_per_worker=0"]))
    assert load_config(overrides=parse_set(["run.backend=gloo"])).run.backend == "gloo"
    assert load_config().run.backend is None  # nccl with GPUs, gloo without
    with pytest.raises(SpecError, match="run.backend"):
        load_config(overrides=parse_set(["run.backend=mpi"]))


def test_default_config_is_a_quick_synthetic_run():
    cfg = load_config()
    assert cfg.dataset.name == "synthetic" and cfg.input_size() == (96, 128)
    assert cfg.training.iterations <= 500 and cfg.optimizer.name == "adam"
    assert all(cfg.loss_weight(t) == w for t, w in OFFICIAL_LOSS_WEIGHTS.items())
    assert cfg.edge_pos_weight_default() == 0.95


@pytest.mark.parametrize("preset, dataset, optimizer, lr, wd, batch", [
    ("atrc", "nyud", "sgd", 0.01, 5e-4, 8),
    ("atrc", "pascal", "sgd", 0.005, 5e-4, 8),
    ("baseline", "nyud", "sgd", 0.01, 5e-4, 8),
    ("demt", "nyud", "sgd", 0.001, 5e-4, 8),
    ("tpanet", "nyud", "adamw", 2e-4, 1e-6, 8),
    ("invpt", "pascal", "adam", 2e-5, 1e-6, 6),
])
def test_official_recipes(tmp_path, preset, dataset, optimizer, lr, wd, batch):
    root = tmp_path / dataset
    root.mkdir()
    path = tmp_path / "run.yaml"
    path.write_text(f"recipe: {preset}\ndataset: {{name: {dataset}, root: {root}}}\n")
    cfg = load_config(path)
    assert (cfg.optimizer.name, cfg.learning_rate(), cfg.optimizer.weight_decay) == (optimizer, lr, wd)
    assert cfg.training.total_batch_size == batch and cfg.training.iterations == 40000
    assert cfg.schedule.name == "poly" and cfg.schedule.power == 0.9
    expected_edge = 0.95 if (preset == "invpt" or dataset == "pascal") else 0.8
    assert cfg.edge_pos_weight_default() == expected_edge
    assert cfg.input_size() == ((425, 560) if dataset == "nyud" else (512, 512))


def test_recipes_shipped_and_unknown_recipe():
    assert {"atrc", "atrc_search", "baseline", "demt", "invpt", "tpanet"} <= set(available_recipes())
    assert load_config(recipe="atrc_search").training.grad_clip == 10.0
    with pytest.raises(SpecError, match="unknown recipe 'atcr'.*did you mean 'atrc'"):
        load_config(recipe="atcr")


def test_user_file_wins_over_preset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: demt\noptimizer: {lr: 0.003}\ntraining: {iterations: 10}\n")
    cfg = load_config(path)
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.003 and cfg.training.iterations == 10


def test_total_batch_must_divide_by_workers(tmp_path):
    message = _error(tmp_path, "training: {total_batch_size: 6}\nrun: {workers: 4}\n")
    assert "training.total_batch_size" in message


def test_cli_prints_config_error_without_traceback_and_exits_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  momentun: 0.9\n")
    proc = subprocess.run([sys.executable, "-m", "mtl_dsl.cli", "train", "baseline_mt", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "unknown key 'optimizer.momentun'" in proc.stderr and "did you mean 'momentum'" in proc.stderr


def test_commands_module_imports_neither_torch_nor_ray():
    code = ("import sys, argparse; import mtl_dsl.runtime.commands as c; "
            "p = argparse.ArgumentParser(); c.register(p.add_subparsers()); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _runtime_imports() -> dict[str, set[str]]:
    """Every import (module level or inside a function) between the runtime's modules."""
    import ast

    import mtl_dsl.runtime as runtime

    folder = Path(runtime.__file__).parent
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtl_dsl.runtime."):
                targets = [node.module.split(".")[2]]
            else:
                continue
            edges.update(t.split(".")[0] for t in targets if t.split(".")[0] in names)
    return graph


def test_runtime_modules_import_each_other_without_cycles():
    graph = _runtime_imports()
    assert graph["commands"] >= {"launch", "config"} and "commands" not in graph["search"]
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(path + [name, target])
            if target not in state:
                visit(target, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


# --- where an error points, and what it says -----------------------------------------------------

def _cli_error(*argv: str) -> str:
    """Run ``mtl-dsl ARGV`` in this process; it must exit 2 with one message and no traceback."""
    import contextlib
    import io

    from mtl_dsl.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(list(argv)) == 2
    assert "Traceback" not in err.getvalue()
    return err.getvalue().strip()


def test_invalid_yaml_points_at_the_line_and_column(tmp_path):
    message = _error(tmp_path, "training:\n  iterations: 3\n  augment: [true, false\n")
    assert message.startswith(f"{tmp_path / 'run.yaml'}:4:1: error: invalid YAML")


def test_a_control_character_is_an_error_at_its_place_not_a_traceback(tmp_path):
    """PyYAML's reader refuses it before parsing (ReaderError, no problem_mark): it escaped as
    a traceback."""
    message = _error(tmp_path, "training:\n  iterations: 3\x00\n")
    assert message == (f"{tmp_path / 'run.yaml'}:2:16: error: invalid YAML: control character "
                       f"U+0000 (is this a binary file?)")
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes([0, 1, 2, 255]))
    with pytest.raises(SpecError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: error: cannot read config file")
    message = _cli_error("train", "baseline_mt", "--set", "optimizer.lr=\x01")
    assert message.startswith("--set:1:14: error: invalid YAML: control character U+0001")


def test_a_yaml_mistake_in_a_set_value_points_into_the_flag():
    with pytest.raises(SpecError) as info:
        parse_set(["training.iterations=3", "training.input_size=[32, 32"])
    (d,) = info.value.diagnostics
    assert (d.file, d.line, d.column) == ("--set", 1, 28)
    assert d.message == "invalid YAML: expected ',' or ']', but got '<stream end>'"
    assert str(info.value).splitlines()[1:] == ["    1 | training.input_size=[32, 32",
                                                "      |                            ^"]


def test_a_plugin_that_is_no_module_path_is_an_error_at_its_entry(tmp_path):
    message = _error(tmp_path, "training:\n  iterations: 2\nplugins:\n  - my_blocks\n  - 3d.x\n")
    assert message == (f"{tmp_path / 'run.yaml'}:5:5: error: key 'plugins': a plugin is a Python "
                       f"module path such as my_package.blocks, got '3d.x'")


def test_an_empty_storage_is_refused_not_the_working_folder(tmp_path):
    """`--storage ''` wrote the run folder straight into the working folder."""
    message = _error(tmp_path, "run:\n  storage: ''\n")
    assert message == (f"{tmp_path / 'run.yaml'}:2:3: error: key 'run.storage': empty; give a "
                       f"folder (default: runs) or a URI such as s3://bucket/prefix")
    assert _cli_error("train", "baseline_mt", "--storage", "").startswith(
        "--storage '': error: key 'run.storage': empty")


def test_our_validators_speak_without_pydantic_s_prefix_or_a_repeated_value(tmp_path):
    """Before: "key 'tune.budget': Value error, budget: ... got '2 hours' (got '2 hours')" and
    "key 'tune.search.dim.list[any]'" (a member of a union in the key)."""
    message = _error(tmp_path, "tune:\n  budget: 2 hours\n")
    assert message == (f"{tmp_path / 'run.yaml'}:2:3: error: key 'tune.budget': budget: expected "
                       f"seconds or a duration such as 2h, 30m or 1h30m, got '2 hours'")
    message = _error(tmp_path, "tune:\n  search:\n    dim:\n      a: 1\n")
    assert message == (f"{tmp_path / 'run.yaml'}:3:5: error: key 'tune.search.dim': Input should "
                       f"be a valid list (got {{'a': 1}})")
    # a key of the user's that looks like a union member is still the key (found by mutating
    # configs/invpt.yaml: 'schedule[:')
    message = _error(tmp_path, "schedule[:\n  name: poly\n")
    assert message == (f"{tmp_path / 'run.yaml'}:1:1: error: unknown key 'schedule[' (did you "
                       f"mean 'schedule'?)")
    message = _error(tmp_path, "tune:\n  search:\n    dim: \"randint(8)\"\n")
    assert message.endswith("key 'tune.search.dim': randint(lo, hi) takes 2 numbers, got 1 "
                            "(got 'randint(8)')")


def test_unknown_key_without_a_close_match_lists_the_keys_of_its_section(tmp_path):
    message = _error(tmp_path, "schedule:\n  wobble: 3\n")
    assert ":2:3: error: unknown key 'schedule.wobble'" in message
    assert "the keys of 'schedule' are name, power, warmup_iters, warmup_ratio, min_lr" in message
    message = _error(tmp_path, "zzz: 1\n")
    assert "the keys of the top level are recipe, dataset, tasks" in message


def test_recipe_and_preset_are_two_words(tmp_path):
    message = _error(tmp_path, "preset: demt\n")
    assert "unknown key 'preset'" in message and "recipe: NAME" in message and "model.preset" in message
    message = _cli_error("train", "baseline_mt", "--recipe", "nope")
    assert message.startswith("--recipe nope: error: unknown recipe 'nope'"), message
    assert "preset" not in message
    assert "recipes: atrc, atrc_search, baseline" in message


def test_command_line_errors_name_the_flag_not_a_position():
    message = _cli_error("train", "baseline_mt", "--set", "training.iterations=lots")
    assert message.startswith("--set training.iterations=lots: error: key 'training.iterations'")
    assert ":1:1:" not in message
    assert _cli_error("train", "baseline_mt", "--input", "96by128").startswith("--input 96by128: error:")
    assert _cli_error("train", "baseline_mt", "--workers", "0").startswith("--workers 0: error:")


def test_an_empty_task_list_is_an_error(tmp_path):
    message = _cli_error("train", "baseline_mt", "--tasks", "")
    assert message.startswith("--tasks '': error: key 'tasks': the task list is empty"), message
    assert "task list is empty" in _error(tmp_path, "tasks: []\n")
    assert "task list is empty" in _error(tmp_path, "tasks: '  '\n")
    from mtl_dsl.tasks import TaskError, resolve_tasks

    with pytest.raises(TaskError, match="the task list is empty"):
        resolve_tasks("")


@pytest.mark.parametrize("key, value, kind", [
    ("training.batch_size", "true", "integer"), ("training.iterations", "2.0", "integer"),
    ("training.augment", "1", "boolean"), ("optimizer.lr", "true", "number"),
    ("run.name", "7", "string"), ("training.input_size", "[32, 32.5]", "integer"),
])
def test_numbers_and_switches_are_strict(key, value, kind):
    with pytest.raises(SpecError, match=rf"^--set {key}=.*: error: key '{key}(\.1)?': Input should be a valid {kind}"):
        load_config(overrides=parse_set([f"{key}={value}"]))


def test_yaml_1_2_numbers_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optimizer: {lr: 1e-3, weight_decay: 5E-4}\nschedule: {min_lr: 1.0e-6}\n")
    cfg = load_config(path)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.schedule.min_lr) == (1e-3, 5e-4, 1e-6)
    assert load_config(overrides=parse_set(["optimizer.lr=2e-5"])).optimizer.lr == 2e-5


def test_a_config_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    from mtl_dsl.runtime.yaml_source import MAX_CONFIG_BYTES

    path = tmp_path / "run.yaml"
    with open(path, "wb") as f:
        f.truncate(50 * 2**20)  # 50 MB (sparse)
    with pytest.raises(SpecError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: error: config file is too large (52,428,800 bytes; the "
                               f"limit is {MAX_CONFIG_BYTES:,})")


def _alias_bomb(levels: int = 10) -> str:
    """A flow mapping of ten-fold references: 10**levels values once aliases are expanded."""
    items = ["a0: &a0 [" + ", ".join(["1"] * 10) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


def test_an_alias_bomb_inside_model_overrides_is_refused(tmp_path):
    message = _error(tmp_path, f"model:\n  overrides: {_alias_bomb()}\n")
    assert message.endswith("error: config expands to more than 100,000 values (YAML aliases "
                            "repeat what they point to)")
    with pytest.raises(SpecError, match=r"^--set model.overrides.x=.*: error: config expands to more than"):
        load_config(overrides=parse_set([f"model.overrides.x={_alias_bomb()}"]))
    small = load_config(overrides=parse_set([f"model.overrides.x={_alias_bomb(3)}"]))
    assert len(small.model.overrides["x"]["a2"]) == 10  # 1,111 values: an ordinary use of aliases


def test_a_key_given_twice_is_an_error_at_the_second(tmp_path):
    message = _error(tmp_path, "training:\n  iterations: 3\n  augment: false\n  iterations: 5\n")
    assert message == (f"{tmp_path / 'run.yaml'}:4:3: error: key 'iterations' is given twice (first "
                       f"at line 2); the last would silently win")
    merged = tmp_path / "merge.yaml"  # a merge key is not a repeated key
    merged.write_text("model:\n  overrides: {<<: {dim: 8}, backbone: resnet18}\n")
    assert load_config(merged).model.overrides == {"dim": 8, "backbone": "resnet18"}


@pytest.mark.parametrize("text, key", [("optimizer:\n  lr: .nan\n", "optimizer.lr"),
                                       ("optimizer:\n  weight_decay: .inf\n", "optimizer.weight_decay"),
                                       ("schedule:\n  min_lr: -.inf\n", "schedule.min_lr")])
def test_nan_and_infinite_numbers_are_refused(tmp_path, text, key):
    message = _error(tmp_path, text)
    assert f":2:3: error: key '{key}': Input should be a finite number" in message


def test_an_input_size_below_8_names_the_flag_and_the_side():
    with pytest.raises(SpecError) as info:
        load_config(overrides=parse_set(["training.input_size=[64, 2]"]))
    assert str(info.value) == ("--set training.input_size=[64, 2]: error: key 'training.input_size.1': "
                               "Input should be greater than or equal to 8 (got 2)")
    assert _cli_error("train", "baseline_mt", "--input", "0x0").startswith(
        "--input 0x0: error: key 'training.input_size.0': Input should be greater than or equal to 8")


def test_deep_nesting_is_refused(tmp_path):
    message = _error(tmp_path, "model:\n  overrides:\n    x: " + "[" * 100 + "]" * 100 + "\n")
    assert "nested more than 64 levels" in message


def test_min_lr_is_where_the_schedule_ends_and_must_be_below_lr(tmp_path):
    from mtl_dsl.runtime.optim import learning_rate

    cfg = load_config(overrides={"optimizer": {"lr": 0.01}, "schedule": {"min_lr": 1e-4, "warmup_iters": 0},
                                 "training": {"iterations": 100}})
    assert learning_rate(0, cfg) == pytest.approx(0.01)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    assert learning_rate(50, cfg) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    cosine = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"name": "cosine"})})
    assert learning_rate(100, cosine) == pytest.approx(1e-4)
    assert "is not below the learning rate" in _error(tmp_path, "schedule: {min_lr: 0.01}\n")
