"""Run-config validation: every mistake is one line naming the key (dotted) or the path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtl_dsl.errors import SpecError
from mtl_dsl.runtime.config import (OFFICIAL_LOSS_WEIGHTS, available_presets, load_config,
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
    with pytest.raises(SpecError, match=r"^--set:1:1: error: unknown key 'training.foo'$"):
        load_config(overrides=parse_set(["training.foo=1"]))
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_set(["lr"])
    assert load_config(overrides=parse_set(["run.threads_per_worker=3"])).run.threads_per_worker == 3
    with pytest.raises(SpecError, match="run.threads_per_worker"):
        load_config(overrides=parse_set(["run.threads_per_worker=0"]))


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
    path.write_text(f"preset: {preset}\ndataset: {{name: {dataset}, root: {root}}}\n")
    cfg = load_config(path)
    assert (cfg.optimizer.name, cfg.learning_rate(), cfg.optimizer.weight_decay) == (optimizer, lr, wd)
    assert cfg.training.total_batch_size == batch and cfg.training.iterations == 40000
    assert cfg.schedule.name == "poly" and cfg.schedule.power == 0.9
    expected_edge = 0.95 if (preset == "invpt" or dataset == "pascal") else 0.8
    assert cfg.edge_pos_weight_default() == expected_edge
    assert cfg.input_size() == ((425, 560) if dataset == "nyud" else (512, 512))


def test_presets_shipped_and_unknown_preset():
    assert {"atrc", "atrc_search", "baseline", "demt", "invpt", "tpanet"} <= set(available_presets())
    assert load_config(preset="atrc_search").training.grad_clip == 10.0
    with pytest.raises(SpecError, match="unknown preset 'atcr'.*did you mean 'atrc'"):
        load_config(preset="atcr")


def test_user_file_wins_over_preset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: demt\noptimizer: {lr: 0.003}\ntraining: {iterations: 10}\n")
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
