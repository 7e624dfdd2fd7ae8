"""The command line: tables, exit codes, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

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
    assert total > 11_000_000


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
