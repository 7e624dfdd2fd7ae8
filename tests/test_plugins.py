"""Plugins: a package installed with an `mtl_dsl.blocks` entry point (a dist-info built here) and a
module named with `--plugin` or the run config are found by `check`, `compile` and `train`, in this
process and on Ray workers (a module that is not installed is shipped to them); a block whose
module raises shows that message, from the driver and from a worker."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtl_dsl import plugins

ROOT = Path(__file__).resolve().parent.parent

BLOCKS = '''
"""Blocks shipped as a plugin."""
import torch
from torch import nn

import mtl_dsl


@mtl_dsl.block("{prefix}_gate", inputs={{"x": "features"}},
               params={{"reduction": "bottleneck ratio"}}, family="{prefix}")
class Gate(nn.Module):
    """A squeeze-and-excitation gate."""

    def __init__(self, in_channels: int, reduction: int = 2):
        super().__init__()
        self.down = nn.Conv2d(in_channels, in_channels // reduction, 1)
        self.up = nn.Conv2d(in_channels // reduction, in_channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))


@mtl_dsl.block("{prefix}_broken", doc="Raises as it runs.", inputs={{"x": "features"}},
               infer="same")
class Broken(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        if x.device.type != "meta":
            raise RuntimeError("{prefix} block met a negative variance")
        return x * self.scale
'''

SPEC = """
model gated(block_name = "gate") {{
  x = conv_bn_act(images, 8, stride = 2)
  y = {prefix}_{{block}}(x)
  for t in tasks {{
    out[t] = conv_bn_act(y, channels(t), kernel = 1, norm = "none", act = "none")
  }}
}}
"""

TRAIN = ["--tasks", "semseg,depth", "--input", "32x32", "--iterations", "2",
         "--set", "training.batch_size=2", "--set", "dataset.length=4",
         "--set", "dataset.val_length=2", "--set", "training.eval_interval=0",
         "--set", "training.log_interval=1"]


def write_spec(folder: Path, prefix: str, block: str) -> Path:
    path = folder / f"{prefix}_{block}.mtl"
    path.write_text(SPEC.format(prefix=prefix).replace("{block}", block))
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """site/ holding the package `demo_blocks` and its dist-info with an entry point, as pip
    would install it."""
    site = tmp_path_factory.mktemp("site")
    (site / "demo_blocks").mkdir()
    (site / "demo_blocks" / "__init__.py").write_text(BLOCKS.format(prefix="demo"))
    info = site / "demo_blocks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-blocks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtl_dsl.blocks]\ndemo = demo_blocks\n")
    (info / "RECORD").write_text("")
    return site


def run(args: list[str], cwd: Path, pythonpath: list[Path], timeout: int = 900,
        code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in [*pythonpath, ROOT]),
               RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mtl_dsl.cli"]
    return subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- an installed package ---------------------------------------------------------------------------

def test_an_installed_plugin_is_found_by_check_compile_and_blocks(installed, tmp_path):
    spec = write_spec(tmp_path, "demo", "gate")
    done = run(["check", str(spec), "--tasks", "semseg,depth", "--input", "32x32"], tmp_path,
               [installed])
    assert done.returncode == 0, done.stderr
    assert "model 'gated' is well-formed: 4 nodes" in done.stdout
    done = run(["compile", str(spec), "--tasks", "semseg,depth", "--input", "32x32"], tmp_path,
               [installed])
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("y "))
    # a 1x1 conv 8 -> 4 and one 4 -> 8, with biases
    assert row.split()[1:4] == ["demo_gate", "[1,", "8,"] and row.split()[-2] == "76"
    done = run(["blocks"], tmp_path, [installed])
    assert "== demo ==" in done.stdout and "demo_gate(x: map, reduction: int = 2) -> out" in \
        done.stdout


def test_without_the_plugin_the_block_is_unknown_with_a_hint(tmp_path):
    spec = write_spec(tmp_path, "demo", "gate")
    done = run(["check", str(spec), "--tasks", "semseg,depth"], tmp_path, [])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: unknown block 'demo_gate'" in done.stderr
    assert "--plugin module.path" in done.stderr


@pytest.mark.slow
def test_an_installed_plugin_trains_in_process_and_on_ray(installed, tmp_path):
    spec = write_spec(tmp_path, "demo", "gate")
    for extra in (["--plain", "--run-name", "plain"], ["--run-name", "ray"]):
        done = run(["train", str(spec), *TRAIN, "--storage", str(tmp_path / "runs"), *extra],
                   tmp_path, [installed])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "done: 2 steps" in done.stdout
        assert (tmp_path / "runs" / extra[-1] / "step_00000002" / "model.safetensors").is_file()


# -- a module named by the user ---------------------------------------------------------------------

def test_plugin_flag_and_run_config_key(tmp_path):
    (tmp_path / "my_blocks.py").write_text(BLOCKS.format(prefix="mine"))
    spec = write_spec(tmp_path, "mine", "gate")
    done = run(["check", str(spec), "--tasks", "semseg,depth", "--plugin", "my_blocks"],
               tmp_path, [])
    assert done.returncode == 0, done.stderr
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [my_blocks]\n")
    done = run(["train", str(spec), *TRAIN, "--plain", "--config", str(config),
                "--storage", str(tmp_path / "runs")], tmp_path, [])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 2 steps" in done.stdout


def test_a_plugin_in_the_working_folder_loads_through_the_console_script(tmp_path):
    """docs/blocks.md: `my_blocks.py`, in the folder you run `mtl-dsl` from. The installed
    `mtl-dsl` is a console script, whose sys.path[0] is its own folder, not the working folder
    (as `python -m` and `-c` have it): a launcher of that shape in another folder."""
    (tmp_path / "my_blocks.py").write_text(BLOCKS.format(prefix="mine"))
    spec = write_spec(tmp_path, "mine", "gate")
    scripts = tmp_path / "bin"
    scripts.mkdir()
    launcher = scripts / "mtl-dsl"
    launcher.write_text("import sys\nfrom mtl_dsl.cli import main\nsys.exit(main())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(launcher), "check", str(spec), "--tasks",
                           "semseg,depth", "--input", "32x32", "--plugin", "my_blocks"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "model 'gated' is well-formed: 4 nodes" in done.stdout
    # a module that is in neither place is still the one-line error naming it
    done = subprocess.run([sys.executable, str(launcher), "check", str(spec), "--plugin",
                           "not_here_blocks"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith(
        "--plugin: error: cannot load plugin 'not_here_blocks': ModuleNotFoundError")


def test_the_api_takes_one_plugin_as_a_string_and_none_as_no_plugin(tmp_path, monkeypatch):
    """plugins="my_blocks" imported the modules 'm', 'y', '_', ...; plugins=None raised
    TypeError, where the API's other optional arguments take None."""
    from mtl_dsl.api import check_spec

    (tmp_path / "str_blocks.py").write_text(BLOCKS.format(prefix="strp"))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = write_spec(tmp_path, "strp", "gate")
    graph = check_spec(spec, tasks="semseg,depth", input_size=(32, 32), plugins="str_blocks")
    assert graph.ir.node("y").block == "strp_gate"
    assert check_spec("baseline_mt", tasks="depth", input_size=(32, 32),
                      overrides={"backbone": "resnet18"}, plugins=None).ir.name == "baseline_mt"


@pytest.mark.parametrize("module,text,message", [
    ("no_such_module", None, "cannot load plugin 'no_such_module': ModuleNotFoundError"),
    ("raising_plugin", "import os\nraise ImportError('needs the gpu extras')\n",
     "cannot load plugin 'raising_plugin': ImportError: needs the gpu extras (at "),
    ("bad_declaration", "import mtl_dsl\nfrom torch import nn\n"
                        "@mtl_dsl.block('conv_bn_act', doc='d', inputs={'x': 'in'})\n"
                        "class A(nn.Module):\n    def forward(self, x): return x\n",
     "block 'conv_bn_act' is defined twice"),
    ("3d.model", None, "a plugin is a Python module path"),
])
def test_a_plugin_that_cannot_load_is_one_line_naming_it(tmp_path, module, text, message):
    if text is not None:
        (tmp_path / f"{module}.py").write_text(text)
    done = run(["check", "baseline_mt", "--plugin", module], tmp_path, [])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr and done.stderr.startswith("--plugin: error:")


def test_a_broken_installed_plugin_is_named_where_its_blocks_are_missed(tmp_path):
    site = tmp_path / "site"
    (site / "broken_blocks-0.1.dist-info").mkdir(parents=True)
    (site / "broken_blocks.py").write_text("raise RuntimeError('built for another torch')\n")
    (site / "broken_blocks-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-blocks\nVersion: 0.1\n")
    (site / "broken_blocks-0.1.dist-info" / "entry_points.txt").write_text(
        "[mtl_dsl.blocks]\nbroken = broken_blocks\n")
    done = run(["check", "baseline_mt", "--tasks", "semseg,depth"], tmp_path, [site])
    assert done.returncode == 0, done.stderr  # specs that do not use it are unaffected
    done = run(["check", str(write_spec(tmp_path, "demo", "gate")), "--tasks", "semseg,depth"],
               tmp_path, [site])
    assert done.returncode == 2 and "unknown block 'demo_gate'" in done.stderr
    assert ("note: plugin 'broken = broken_blocks' of broken-blocks 0.1 failed to load: "
            "RuntimeError: built for another torch") in done.stderr


# -- errors raised by a block's module -------------------------------------------------------------

@pytest.mark.slow
def test_a_block_that_raises_shows_its_message_in_process_and_from_a_ray_worker(tmp_path):
    """The plugin is on the driver's sys.path only (not PYTHONPATH, not the working folder): a
    Ray worker can run it only if it was shipped with the job."""
    plugin_dir = tmp_path / "elsewhere"
    plugin_dir.mkdir()
    (plugin_dir / "far_blocks.py").write_text(BLOCKS.format(prefix="far"))
    work = tmp_path / "work"
    work.mkdir()
    spec = write_spec(work, "far", "broken")
    driver = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(plugin_dir)!r})
        from mtl_dsl.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    for extra in (["--plain", "--run-name", "plain"], ["--run-name", "ray"]):
        done = run(["train", str(spec), *TRAIN, "--plugin", "far_blocks",
                    "--storage", str(work / "runs"), *extra], work, [], code=driver)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert f"{spec}:4:7: error: far_broken 'y': the module of block 'far_broken' " \
               f"(far_blocks.Broken) raised RuntimeError while it ran: far block met a negative " \
               f"variance (at " in done.stderr, done.stderr
        # the worker ran the copy Ray shipped; in this process, the file itself
        where = done.stderr.split("variance (at ")[1].split(":")[0]
        assert Path(where).name == "far_blocks.py"
        assert (where == str(plugin_dir / "far_blocks.py")) == (extra[0] == "--plain"), where


def test_modules_that_are_not_installed_are_shipped(tmp_path, monkeypatch):
    (tmp_path / "local_plugin.py").write_text("X = 1\n")
    (tmp_path / "local_pkg").mkdir()
    (tmp_path / "local_pkg" / "__init__.py").write_text("")
    (tmp_path / "local_pkg" / "blocks.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = plugins.shipped_modules(["local_plugin", "local_pkg.blocks", "yaml", "json"])
    assert shipped == [str(tmp_path / "local_plugin.py"), str(tmp_path / "local_pkg")]
