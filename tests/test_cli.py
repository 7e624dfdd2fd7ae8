"""The command line: tables, exit codes, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtl_dsl.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl_dsl.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_compile_prints_a_table_with_exact_totals(capsys):
    assert main(["compile", "baseline_mt", "--tasks", "semseg:5,depth", "--set", "backbone=resnet18",
                 "--input", "64x64"]) == 0
    out = capsys.readouterr().out
    assert "x.feats" in out and "out.semseg" in out and "GMACs" in out
    assert "parameters: " in out and "multiply-adds" in out and "1 MAC = 2 FLOPs" in out
    total = int(out.split("parameters: ")[1].split(" total")[0].replace(",", ""))
    # ResNet-18: 11,689,512 parameters (torchvision's documented figure, ResNet18_Weights), of
    # which the 512 -> 1000 classifier holds 513,000. Levels 1-4 concatenated: 64 + 128 + 256 +
    # 512 = 960 channels; each head (ATRC's FCNHead) is a 3x3 960 -> 240 conv without bias, its
    # BatchNorm (2 x 240) and a 1x1 240 -> C conv with bias.
    backbone = 11_689_512 - (512 * 1000 + 1000)
    heads = sum(960 * 240 * 9 + 2 * 240 + 240 * c + c for c in (5, 1))
    assert total == backbone + heads == 15_326_118


def test_emit_ir_dot_svg(tmp_path, capsys):
    ir, dot, svg = tmp_path / "ir.json", tmp_path / "g.dot", tmp_path / "g.svg"
    assert main(["compile", "baseline_mt", "--emit", str(ir), "--emit", str(dot), "--emit", str(svg),
                 "--emit-only"]) == 0
    assert json.loads(ir.read_text())["name"] == "baseline_mt"
    assert dot.read_text().startswith('digraph "baseline_mt"')
    assert svg.read_text().startswith("<svg")


def test_render_marks_where_values_come_from(capsys):
    assert main(["render", "baseline_mt", "--preset", "swin_t", "--set", "levels=[1, 2]"]) == 0
    out = capsys.readouterr().out
    assert "preset 'swin_t'" in out and "--set" in out and "default, " in out
    assert "via " in out  # nodes inlined from the fcn_features block say so


def test_blocks_lists_signatures(capsys):
    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    assert "conv_bn_act(x: map, channels: int" in out and "== common ==" in out
    assert main(["blocks", "dense_head"]) == 0


def test_spec_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.mtl"
    bad.write_text("model m() {\n  x = conv_bn_act(images, 4\n}\n")
    for cmd in (["check", str(bad)], ["compile", str(bad)], ["render", str(bad)],
                ["check", "baseline_mt", "--set", "dim=abc def"], ["check", "nope"],
                ["check", "baseline_mt", "--tasks", "nyu"], ["check", "baseline_mt", "--input", "x"]):
        r = run(*cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "error:" in r.stderr, (cmd, r.stderr)


def test_help_is_whole_and_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    prose = r.stdout.split("\n\n")[1]  # the description, after the usage line
    assert prose.rstrip().endswith("."), prose  # a whole sentence, not a cut docstring line
    for command in ("check", "compile", "render", "blocks", "train", "search", "eval", "predict",
                    "fmt", "lsp"):
        assert f"\n    {command} " in r.stdout
    assert "mtl-dsl COMMAND --help" in r.stdout


USER_SPEC = """
model mine(dim = 8) {
  x = conv_bn_act(images, dim, stride = 4)
  for t in tasks {
    d[t] = conv_bn_act(x, dim)
  }
  g = split(attention(tokens(d), heads = 2, over = "self"), d)
  for t in tasks {
    out[t] = dense_head(g[t], task = t)
  }
}
"""


def test_idle_note_claims_official_parity_only_for_a_reference_spec(tmp_path, capsys):
    spec = tmp_path / "mine.mtl"
    spec.write_text(USER_SPEC)
    assert main(["compile", str(spec), "--tasks", "semseg:3,depth", "--input", "32x32",
                 "--no-flops"]) == 0
    out = capsys.readouterr().out
    idle = out[out.index("idle parameters"):]
    assert idle.startswith("idle parameters (never receive a gradient, frozen):")
    assert "parity" not in idle and "official" not in idle
    assert main(["compile", "tpanet", "--tasks", "semseg:3,depth", "--input", "32x32",
                 "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "built for parameter parity with TPANet's released head (github.com/yangyangxu0/TPANet" in out
    edited = tmp_path / "tpanet.mtl"  # a user's edited copy reproduces nothing official
    edited.write_text(Path(resources_spec("tpanet")).read_text() + "\n# mine\n")
    assert main(["compile", str(edited), "--tasks", "semseg:3,depth", "--input", "32x32",
                 "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "parity" not in out[out.index("idle parameters"):]


def resources_spec(name: str) -> Path:
    from mtl_dsl.api import resolve_spec_path

    return resolve_spec_path(name)[0]
