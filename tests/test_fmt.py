"""``mtl-dsl fmt``: one canonical layout that changes nothing but whitespace.

Properties over every shipped spec and hypothesis-generated texts (random sentences of the
grammar, the shipped specs laid out at random): formatting is idempotent, keeps every token and
comment in order (trailing comments trailing, own-line comments on their own lines), and the IR
of the formatted spec equals the original's, source locations aside.
"""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from lark import Tree

from grammar_sentences import grammar_sentences, relaid
from mtl_dsl.api import load_ir
from mtl_dsl.cli import main
from mtl_dsl.errors import SpecError
from mtl_dsl.fmt import WIDTH, format_source
from mtl_dsl.fmt.rules import Layout
from mtl_dsl.fmt.syntax import parse, token_sequence, tree_parser
from mtl_dsl.frontend import iter_builtin_specs

ROOT = Path(__file__).resolve().parent.parent
SPECS = {p.name: p.read_text() for p in iter_builtin_specs()}
SHIPPED = sorted((ROOT / "specs").rglob("*.mtl"))  # the examples too
PROFILES = ("nyud", "pascal")
HELPERS = {"tok", "notes", "doc", "docs", "blank_above", "head", "spaced", "tight", "listing",
           "bracketed"}


def tree_names() -> set[str]:
    """The names a parse tree of the grammar can carry: each rule (or its alias) that Lark does
    not inline."""
    names = set()
    for rule in tree_parser().lark.rules:
        if rule.origin.name.startswith("_"):
            continue
        if rule.options.expand1 and len(rule.expansion) == 1 and not rule.alias:
            continue  # `?rule: x`: always inlined
        names.add(str(rule.alias or rule.origin.name))
    return names


def ir_without_locations(ir) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: [Path(p).name for p in v] if k == "imports" else strip(v)
                    for k, v in value.items() if k not in ("loc", "trace", "file")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(ir.model_dump(mode="json"))


def meaning(path: Path) -> dict:
    """What a spec file means under each task profile: its IR without source locations, or
    the messages of the errors it gives (a spec written for one profile fails under another)."""
    out: dict = {}
    for tasks in PROFILES:
        try:
            out[tasks] = ir_without_locations(load_ir(path, tasks=tasks))
        except SpecError as e:
            out[tasks] = sorted(d.message for d in e.diagnostics)
    assert any(isinstance(v, dict) for v in out.values()), f"{path} lowers under no profile"
    return out


@functools.lru_cache(maxsize=None)
def shipped_meaning(name: str) -> dict:
    return meaning(ROOT / "specs" / name)


# the rules -----------------------------------------------------------------------------------

def test_every_grammar_rule_has_a_layout():
    missing = sorted(n for n in tree_names() if not callable(getattr(Layout, n, None)))
    assert not missing, f"grammar rules without a layout in mtl_dsl/fmt/rules.py: {missing}"


def test_every_layout_is_a_grammar_rule():
    methods = {n for n in vars(Layout) if not n.startswith("_") and n not in HELPERS}
    assert methods - tree_names() == set()


def test_a_rule_without_a_layout_is_refused():
    with pytest.raises(NotImplementedError, match="no layout for grammar rule 'novel'"):
        Layout(parse("")).doc(Tree("novel", []))


# the shipped specs ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_specs_are_formatted(path):
    text = path.read_text()
    assert format_source(text, path.name) == text, f"run: mtl-dsl fmt {path.relative_to(ROOT)}"


@pytest.mark.parametrize("width", [30, 60])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_narrow_layouts_keep_meaning(tmp_path, name, width):
    text = format_source(SPECS[name], name, width=width)
    assert format_source(text, name, width=width) == text
    assert token_sequence(parse(text)) == token_sequence(parse(SPECS[name]))
    if "model " in SPECS[name]:
        for imported in re.findall(r'^import "([^"]+)"', SPECS[name], re.M):
            (tmp_path / imported).write_text(SPECS[imported])
        (tmp_path / name).write_text(text)
        assert meaning(tmp_path / name) == shipped_meaning(name)


def test_long_calls_fill_lines_under_their_first_argument():
    text = format_source("model m(a = 1) { x = f(aaaa, bbbb, cccc = [1, 2, 3], dddd = 4) }",
                         width=32)
    assert text == ("model m(a = 1) {\n"
                    "  x = f(aaaa, bbbb,\n"
                    "        cccc = [1, 2, 3],\n"
                    "        dddd = 4)\n"
                    "}\n")


def test_layout_of_each_construct():
    source = ('import "a.mtl"  as  a\nimport "b.mtl"\nblock  f( x,y : int=1 ){ return x , y }\n'
              'model m(a=1){preset p(a=2) table ctx{semseg<-depth:global ,*: none\n'
              '* <- *:t_label}\nfor t in tasks if t!="edge"{out[t]=f(x=images)[0]}\n'
              'if a>1 and not a in [1,2]{y=-a//2%3}else if a{y={k:1,"q":(2)}[k]}else{y=[]}\n'
              'z=g(y)::[B,2*a,H/4,W//8+1] weights official{"a.{t}"->"b" unused "c":"why"}}\n')
    assert format_source(source) == (
        'import "a.mtl" as a\n'
        'import "b.mtl"\n'
        '\n'
        'block f(x, y: int = 1) {\n'
        '  return x, y\n'
        '}\n'
        '\n'
        'model m(a = 1) {\n'
        '  preset p(a = 2)\n'
        '  table ctx {\n'
        '    semseg <- depth: global, *: none\n'
        '    *      <- *: t_label\n'
        '  }\n'
        '  for t in tasks if t != "edge" {\n'
        '    out[t] = f(x = images)[0]\n'
        '  }\n'
        '  if a > 1 and not a in [1, 2] {\n'
        '    y = -a // 2 % 3\n'
        '  } else if a {\n'
        '    y = {k: 1, "q": (2)}[k]\n'
        '  } else {\n'
        '    y = []\n'
        '  }\n'
        '  z = g(y) :: [B, 2*a, H/4, W//8 + 1]\n'
        '  weights official {\n'
        '    "a.{t}" -> "b"\n'
        '    unused "c": "why"\n'
        '  }\n'
        '}\n')


def test_comments_stay_where_they_were():
    source = ("# header\n\n\n\nmodel m(a = 1,  # first\n   b = 2) {   # open\n"
              "  x = f(a,\n# inside\n b)  # after\n\n\n  # before y\n  y = x # y\n"
              "  # closing\n}\n# end\n")
    assert format_source(source) == (
        "# header\n"
        "\n"
        "model m(a = 1,    # first\n"
        "        b = 2) {  # open\n"
        "  x = f(a,\n"
        "        # inside\n"
        "        b)  # after\n"
        "\n"
        "  # before y\n"
        "  y = x  # y\n"
        "  # closing\n"
        "}\n"
        "# end\n")


def test_trailing_comments_of_consecutive_lines_share_a_column():
    text = format_source("model m() {\n  a = 1 # one\n  bbbbbb = 2   # two\n\n  c = 3 # three\n}")
    assert text.splitlines()[1:5] == ["  a = 1       # one", "  bbbbbb = 2  # two", "",
                                      "  c = 3  # three"]


def test_a_number_before_a_dot_keeps_its_space():
    assert format_source("model m() { x = 1 .y }") == "model m() {\n  x = 1 .y\n}\n"


def test_empty_and_comment_only_files():
    assert format_source("") == ""
    assert format_source("  \n\n") == ""
    assert format_source("# only\n\n\n# comments") == "# only\n\n# comments\n"


def test_a_spec_that_does_not_parse_gives_the_parsers_error():
    with pytest.raises(SpecError) as e:
        format_source("model m( {\n", "bad.mtl")
    assert e.value.diagnostics[0].file == "bad.mtl"
    assert (e.value.line, e.value.column) == (1, 10)


# properties ----------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(text=grammar_sentences(), width=st.sampled_from([20, 50, WIDTH]))
def test_grammar_sentences_format_idempotently_keeping_every_token(text, width):
    formatted = format_source(text, width=width)
    assert format_source(formatted, width=width) == formatted
    assert token_sequence(parse(formatted)) == token_sequence(parse(text))
    assert formatted.endswith("\n") or formatted == ""
    assert all(line == line.rstrip() for line in formatted.splitlines())


# no shrinking: a relaid spec is long and shrinks for minutes; the failing text is printed whole
@settings(max_examples=12, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(sorted(n for n in SPECS if "model " in SPECS[n])))
def test_relaid_shipped_specs_format_back_with_the_same_ir(tmp_path, data, name):
    ugly = data.draw(relaid(SPECS[name]))
    formatted = format_source(ugly, name)
    assert formatted == SPECS[name]  # one canonical layout, whatever the whitespace was
    for imported in re.findall(r'^import "([^"]+)"', SPECS[name], re.M):
        (tmp_path / imported).write_text(SPECS[imported])
    (tmp_path / name).write_text(ugly)
    assert meaning(tmp_path / name) == shipped_meaning(name)


# the command ---------------------------------------------------------------------------------

def test_check_exits_1_when_a_file_would_change_and_changes_nothing(tmp_path, capsys):
    ugly = tmp_path / "m.mtl"
    ugly.write_text("model m(){out[t]=images}\n")
    good = tmp_path / "g.mtl"
    good.write_text(SPECS["demt.mtl"])
    assert main(["fmt", "--check", str(good)]) == 0
    assert main(["fmt", "--check", str(good), str(ugly)]) == 1
    assert ugly.read_text() == "model m(){out[t]=images}\n"
    assert f"would reformat {ugly}" in capsys.readouterr().err


def test_fmt_rewrites_in_place_then_check_passes(tmp_path, capsys):
    spec = tmp_path / "m.mtl"
    spec.write_text("model m(){out[t]=images}\n")
    assert main(["fmt", str(tmp_path)]) == 0  # a folder: its .mtl files
    assert spec.read_text() == "model m() {\n  out[t] = images\n}\n"
    assert main(["fmt", "--check", str(spec)]) == 0
    assert "1 file reformatted" in capsys.readouterr().err


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path, capsys):
    spec = tmp_path / "m.mtl"
    spec.write_text("model m(){out[t]=images}\n")
    assert main(["fmt", "--diff", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- {spec} (original)\n+++ {spec} (formatted)\n")
    assert "-model m(){out[t]=images}\n" in out and "+  out[t] = images\n" in out
    assert spec.read_text() == "model m(){out[t]=images}\n"


def test_a_broken_file_exits_2_and_the_others_are_still_formatted(tmp_path, capsys):
    bad, ugly = tmp_path / "bad.mtl", tmp_path / "ugly.mtl"
    bad.write_text("model m( {\n")
    ugly.write_text("model m(){out[t]=images}\n")
    assert main(["fmt", str(bad), str(ugly)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:10: error: unexpected '{{'" in err and "Traceback" not in err
    assert ugly.read_text() == "model m() {\n  out[t] = images\n}\n"
    assert main(["fmt", str(tmp_path / "missing.mtl")]) == 2


def test_standard_input_to_standard_output():
    done = subprocess.run([sys.executable, "-m", "mtl_dsl.cli", "fmt", "-"], text=True,
                          input="model m(){out[t]=images}", capture_output=True, check=True)
    assert done.stdout == "model m() {\n  out[t] = images\n}\n"


def test_pre_commit_hooks_run_fmt_on_mtl_files():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    by_id = {h["id"]: h for h in hooks}
    assert by_id["mtl-fmt"]["entry"] == "mtl-dsl fmt"
    assert by_id["mtl-fmt-check"]["entry"] == "mtl-dsl fmt --check"
    for hook in hooks:
        assert hook["language"] == "python"
        assert re.search(hook["files"], "specs/demt.mtl") and not re.search(hook["files"], "a.py")


def test_a_width_below_one_and_a_folder_without_specs_are_errors(tmp_path, capsys):
    """--width 0 or -5 laid a spec out one token per line and exited 0; a folder holding no
    .mtl file (a mistyped one) formatted nothing and said nothing."""
    spec = tmp_path / "g.mtl"
    spec.write_text(SPECS["demt.mtl"])
    for width in ("0", "-5"):
        assert main(["fmt", "--width", width, str(spec)]) == 2
        assert capsys.readouterr().err == (f"--width: error: the width must be a positive number "
                                           f"of columns, got {width}\n")
    assert spec.read_text() == SPECS["demt.mtl"]
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert main(["fmt", str(empty), str(spec)]) == 2  # the other names are still formatted
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{empty}: error: no .mtl file in the folder {empty}",
                                "0 files reformatted, 1 unchanged"]
