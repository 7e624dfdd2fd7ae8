"""`weights NAME { ... }`: the language construct that says how official checkpoints name a
spec's tensors, expanded to plain IR entries while the spec is lowered (no torch)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtl_dsl.api import check_spec, load_ir
from mtl_dsl.errors import SpecError

HEAD = """
block pair(x, n: int = 2) {
  for j in range(n) {
    m[j] = conv_bn_act(x, 8)
  }
  weights official {
    for j in range(n) {
      "layers.{j}" -> "m.{j}"
    }
  }
  return m[n - 1]
}
"""


def lower(tmp_path: Path, body: str, extra: str = "", tasks: str = "semseg:3,depth",
          name: str = "m.mtl"):
    path = tmp_path / name
    path.write_text(extra + "model m(width = 8) {\n" + body + "\n}\n")
    return load_ir(str(path), tasks=tasks, input_size=(32, 32))


def entries(ir, name: str = "official") -> list[tuple[str, str | None]]:
    return [(e.official, e.target) for e in ir.weight_maps[name]]


MODEL = """
  feats = backbone("resnet18", levels = [1, 2])
  x = upsample_concat(feats)
  for t in tasks {
    out[t] = conv_bn_act(x, channels(t), kernel = 1, norm = "none", act = "none")
  }
"""


def test_entries_expand_per_task_with_name_and_position(tmp_path):
    ir = lower(tmp_path, MODEL + """
  weights official {
    "backbone" -> "feats"
    "head.final_logits.{t}" -> "out.{t}.conv"
    "head.per_task.{i}" -> "out.{t}"
    unused "head.aux": "not built"
  }""")
    assert entries(ir) == [("backbone", "feats"),
                           ("head.final_logits.semseg", "out.semseg.conv"),
                           ("head.final_logits.depth", "out.depth.conv"),
                           ("head.per_task.0", "out.semseg"), ("head.per_task.1", "out.depth"),
                           ("head.aux", None)]
    assert ir.weight_maps["official"][-1].reason == "not built"
    assert ir.weight_maps["official"][1].loc.line == 11  # where the entry is written


def test_loops_ifs_and_constants_in_scope(tmp_path):
    ir = lower(tmp_path, MODEL + """
  weights official {
    for t in tasks if t != "depth" {
      "a.{t}.{width}" -> "out.{t}"
    }
    if width > 4 { "big" -> "feats" } else { "small" -> "feats" }
  }""")
    assert entries(ir) == [("a.semseg.8", "out.semseg"), ("big", "feats")]


def test_block_entries_are_relative_and_compose_under_an_outer_entry(tmp_path):
    ir = lower(tmp_path, MODEL + """
  for t in tasks {
    p[t] = pair(x, n = 2)
  }
  weights official {
    "head.mixers.{i}" -> "p.{t}"
  }""", HEAD)
    assert entries(ir) == [("head.mixers.0.layers.0", "p.semseg.m.0"),
                           ("head.mixers.0.layers.1", "p.semseg.m.1"),
                           ("head.mixers.1.layers.0", "p.depth.m.0"),
                           ("head.mixers.1.layers.1", "p.depth.m.1")]


def test_a_blocks_map_no_entry_points_at_is_included_as_written(tmp_path):
    ir = lower(tmp_path, MODEL + "  q = pair(x, n = 1)\n", HEAD)
    assert entries(ir) == [("layers.0", "q.m.0")]
    assert ir.weight_maps["official"][0].via == []  # a block of the same file


def test_entries_of_an_imported_block_remember_the_import(tmp_path):
    (tmp_path / "lib.mtl").write_text(HEAD)
    ir = lower(tmp_path, MODEL + "  q = lib.pair(x, n = 1)\n  r = pair(x, n = 1)\n",
               'import "lib.mtl" as lib\nimport "lib.mtl"\n')
    assert [(e.target, e.via) for e in ir.weight_maps["official"]] == [("q.m.0", ["lib"]),
                                                                       ("r.m.0", ["lib"])]


def test_the_reference_hybrid_takes_demts_entries_through_its_import():
    ir = load_ir("hybrid_demt_tpanet", tasks="nyud")
    by_part = {}
    for e in ir.weight_maps["official"]:
        by_part.setdefault(tuple(e.via), []).append(e.official)
    assert "head.linear1" in by_part[("demt",)] and "head.adapt_task_mixing" in by_part[("tpanet",)]
    assert "head.defor_mixers.3.blocks.0" in by_part[("demt",)]


def test_a_target_that_names_no_node_is_located(tmp_path):
    with pytest.raises(SpecError) as info:
        lower(tmp_path, MODEL + """
  weights official {
    "head.logits.{t}" -> "outs.{t}.conv"
  }""")
    d = info.value.diagnostics[0]
    assert (d.line, d.column) == (10, 26)  # the target pattern
    assert "weights map 'official': 'outs.semseg.conv' (for t = semseg) names no node of this model" \
        in d.message and d.hint == "did you mean 'out.semseg'?"


@pytest.mark.parametrize("entry, message", [
    ('"head.{k}" -> "feats"', "unknown name 'k' in '{k}'"),
    ('"head.{width + 1}" -> "feats"', "'{width + 1}' is not a placeholder"),
    ('"head..x" -> "feats"', "'head..x' is not a dotted official name"),
    ('"head" -> "feats."', "'feats.' is not a dotted name of this spec"),
    ('ignored "head": "x"', "expected an entry \"official\" -> \"ours\" or unused"),
])
def test_entry_mistakes(tmp_path, entry, message):
    with pytest.raises(SpecError, match="weights map 'official': " + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")
                       .replace("+", r"\+").replace(".", r"\.")):
        lower(tmp_path, MODEL + "  weights official {\n    " + entry + "\n  }")


def test_a_map_goes_at_the_top_level_of_a_body(tmp_path):
    with pytest.raises(SpecError, match="at the top level of a block or model, not inside a loop"):
        lower(tmp_path, MODEL + """
  if width > 2 {
    weights official { "backbone" -> "feats" }
  }""")


def test_weights_and_unused_stay_usable_as_names(tmp_path):
    ir = lower(tmp_path, """
  weights = backbone("resnet18", levels = [1])
  unused = upsample_concat(weights)
  for t in tasks {
    out[t] = conv_bn_act(unused, channels(t), kernel = 1, norm = "none", act = "none")
  }
  weights official { "backbone" -> "weights" }""")
    assert entries(ir) == [("backbone", "weights")]
    with pytest.raises(SpecError, match="unknown statement 'wieghts official"):
        lower(tmp_path, MODEL + '  wieghts official { "backbone" -> "feats" }')


def test_every_reference_spec_has_an_official_map_that_check_accepts():
    for spec, tasks in [("baseline_mt", "nyud"), ("baseline_st", "semseg:40"), ("demt", "pascal"),
                        ("tpanet", "nyud"), ("atrc", "pascal"), ("atrc_nyud_hrnet18", "nyud"),
                        ("atrc_nyud_hrnet48", "nyud"), ("atrc_pascal_hrnet18", "pascal"),
                        ("invpt", "pascal")]:
        ir = check_spec(spec, tasks=tasks).ir
        assert ir.weight_maps["official"], spec


def test_maps_are_read_without_torch():
    code = ("import sys; from mtl_dsl.api import load_ir; ir = load_ir('invpt', tasks='nyud'); "
            "assert ir.weight_maps['official']; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_render_lists_the_expanded_maps(capsys):
    from mtl_dsl.cli import main

    assert main(["render", "hybrid_demt_tpanet", "--tasks", "semseg:3,depth"]) == 0
    text = capsys.readouterr().out
    maps = text[text.index("  weights official {"):]
    assert '"head.defor_mixers.1.blocks.0" -> "d.d.depth.m.0"' in maps and "via demt" in maps
    assert '"head.cross_atts.1" -> "y.a.depth.attn"' in maps and "via tpanet" in maps
