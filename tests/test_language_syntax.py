"""The front-end: syntax errors (one per mistake; constructs of other languages named), ``--set``
values, task names, reserved node names, import links, and operator precedence against Python's."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec, load_ir, parse_override
from mtl_dsl.errors import SpecError
from mtl_dsl.tasks import PROFILES
from test_language import TINY, _model, errors_of, write

# -- syntax errors: one per mistake, and constructs of other languages named ----------------------

BODY = """  x = conv_bn_act(images, dim, stride = 4)
  y = conv_bn_act(x, dim, kernel = 3,
                  stride = 1)
  for t in tasks {
    h[t] = conv_bn_act(y, dim)
    out[t] = dense_head(h[t], task = t)
  }"""


@pytest.mark.parametrize("old,new,line,fragment", [
    ("images, dim, stride", "images dim, stride", 2, "unexpected name 'dim'"),
    ("stride = 4)", "stride = 4", 3, "is a ')' missing at the end of line 2?"),
    ("kernel = 3,", "kernel = 3", 4, "unexpected name 'stride'"),
    ("stride = 4)", "stride = 4) }", 3, "unexpected name 'y'"),
    ("for t in tasks {", "for t in tasks", 6, "is a '{' missing at the end of line 5?"),
    ("h[t] = conv_bn_act(y, dim)", "h[t] = = conv_bn_act(y, dim)", 6, "unexpected '='"),
    ("x = conv_bn_act", "x = 'a' + conv_bn_act", 2, "unexpected character '''"),
])
def test_a_syntax_error_is_reported_once(tmp_path, old, new, line, fragment):
    e = errors_of(write(tmp_path, _model(BODY.replace(old, new, 1))))
    assert len(e.diagnostics) == 1, str(e)
    assert e.line == line and fragment in str(e), str(e)


def test_a_bracket_left_open_by_a_syntax_error_does_not_change_the_if_statements_after_it(
        tmp_path):
    """An `if` that starts a statement is told from a conditional expression's by the brackets
    open before it; after a syntax error, those of the broken statement do not count."""
    body = BODY.replace("  for t in tasks {", "  if dim > 2 {\n    z = 1\n  }\n  for t in tasks {")
    e = errors_of(write(tmp_path, _model("  w = max((1, 2)\n" + body)))
    assert [d.line for d in e.diagnostics] == [2], str(e)
    assert errors_of(write(tmp_path, "(\n" + _model(body))).line == 1


def test_independent_syntax_errors_are_each_reported(tmp_path):
    text = _model(BODY.replace("images, dim", "images dim").replace("h[t] = conv", "h[t] = = conv"))
    e = errors_of(write(tmp_path, text + "block b(x) {\n  return x +* 1\n}\n"))
    assert [d.line for d in e.diagnostics] == [2, 6, 11]


@pytest.mark.parametrize("statement,message,hint", [
    ("y = [a for a in [1, 2]]", "a list comprehension is not part of the language", "for v in"),
    ("y = {a: 1 for a in tasks}", "a dict comprehension is not part of the language", "for v in"),
    ("y = true ? 1 : 2", "a conditional expression 'c ? a : b' is not part", "a if c else b"),
    ("y = max(1, a for a in [1, 2])", "a generator expression is only allowed as the sole "
                                      "argument of a call", "sum(x[s] for s in tasks)"),
    ("while true {\n    y = 1\n  }", "a 'while' loop is not part of the language", "range(n)"),
    ("while n < 3 {\n    y = 1\n  }", "a 'while' loop is not part of the language", "range(n)"),
    ("let y = 1", "'let' is not part of the language", "name = value"),
    ("def f(x) {\n    y = x\n  }", "'def' is not part of the language", "block name("),
    ("y += 1", "'+=' is not part of the language", "x = x + ..."),
    ("y = 2 ** 3", "'**' (power) is not part of the language", "x * x"),
    ("y = true && false", "'&&' is not part of the language", "'and'"),
    ("y = true || false", "'||' is not part of the language", "'or'"),
    ("y = !true", "'!' is not part of the language", "'not'"),
    ("y = 1;", "';' is not part of the language", "end of its line"),
])
def test_constructs_the_language_lacks_are_named(tmp_path, statement, message, hint):
    e = errors_of(write(tmp_path, _model("  " + statement + "\n" + BODY)))
    (d,) = e.diagnostics
    assert d.message.startswith(message) and hint in d.hint and d.line == 2


def test_an_import_without_quotes_is_named(tmp_path):
    e = errors_of(write(tmp_path, "import demt\n" + _model(BODY)))
    (d,) = e.diagnostics
    assert d.message == "an import names a file in double quotes"
    assert d.hint == 'write: import "demt.mtl"'


def test_python_constants_hint_at_the_spelling(tmp_path):
    e = errors_of(write(tmp_path, _model("  flag = True\n" + BODY)))
    assert e.message == "unknown name 'True'" and e.hint == "write true"


# -- --set values, task names, reserved node names, links -----------------------------------------

@pytest.mark.parametrize("text,message", [
    ("dim=abc", "parameter 'dim' must be int, got str ('abc')"),
    ("dim=64.5", "parameter 'dim' must be int, got float (64.5)"),
])
def test_a_wrong_set_value_is_one_error_at_the_flag(text, message):
    key, value = parse_override(text)
    with pytest.raises(SpecError) as info:
        check_spec("baseline_mt", overrides={key: value})
    (d,) = info.value.diagnostics
    assert d.message == message and d.file == "--set"
    assert d.source_line == text and d.column == len("dim=") + 1


def test_a_wrong_set_value_exits_2_without_a_traceback(capsys):
    from mtl_dsl.cli import main

    assert main(["check", "baseline_mt", "--set", "dim=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--set:1:5: error: parameter 'dim' must be int") and "Traceback" not in err


def test_a_default_of_the_wrong_type_is_an_error(tmp_path):
    e = errors_of(write(tmp_path, TINY.replace("dim = 8", 'dim: int = "eight"')))
    assert e.message == "parameter 'dim' must be int, got str ('eight')"


@pytest.mark.parametrize("where", ["out", "task"])
def test_a_task_typo_suggests_the_task_and_lists_the_profile(tmp_path, where):
    body = ('  x = conv_bn_act(images, 4, stride = 4)\n  for t in tasks {\n'
            '    out[t] = dense_head(x, task = t)\n  }\n')
    body += ('  out["segsem"].aux = dense_head(x, task = "depth")' if where == "out" else
             '  y = dense_head(x, task = "segsem")')
    e = errors_of(write(tmp_path, _model(body)), tasks="nyud")
    assert e.diagnostics[0].message == "unknown task 'segsem'"
    assert e.diagnostics[0].hint == ("did you mean 'semseg'? (the tasks of this profile: semseg, "
                                     "depth, normals, edge)")


@pytest.mark.parametrize("name", ["add_submodule", "delete_submodule",
                                  "delete_all_unused_submodules", "forward", "training", "ir",
                                  "class"])
def test_nodes_cannot_be_named_after_attributes_of_the_compiled_model(tmp_path, name):
    e = errors_of(write(tmp_path, TINY.replace("h[t] = conv_bn_act(x, dim)",
                                               f"{name} = conv_bn_act(x, dim)\n    h[t] = {name}")))
    (d,) = e.diagnostics
    assert d.message.startswith(f"'{name}' cannot name a node: ") and d.line == 10


def test_inner_names_of_a_block_cannot_be_module_attributes(tmp_path):
    spec = TINY.replace("y = conv_bn_act(x, ch, stride = 2)", "forward = conv_bn_act(x, ch, stride = 2)")
    spec = spec.replace("return conv_bn_act(y, ch", "return conv_bn_act(forward, ch")
    e = errors_of(write(tmp_path, spec))
    (d,) = e.diagnostics
    assert d.message == ("'forward' cannot name a node (in 'x.forward'): every torch module has an "
                         "attribute of that name") and d.line == 3


def test_an_import_link_to_another_kind_of_file_is_refused_without_reading_it(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not echo this line\n")
    (tmp_path / "lib.mtl").symlink_to(secret)
    e = errors_of(write(tmp_path, 'import "lib.mtl"\n' + TINY))
    (d,) = e.diagnostics
    assert d.message == (f"cannot import 'lib.mtl': it is a link to {secret.resolve()}, which is "
                         f"not a .mtl spec file")
    assert "do not echo" not in str(e)
    (tmp_path / "top.mtl").symlink_to(secret)
    with pytest.raises(SpecError) as info:
        check_spec(tmp_path / "top.mtl")
    assert "is a link to" in info.value.message and "do not echo" not in str(info.value)


def test_an_import_link_to_a_spec_file_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    write(tmp_path / "real", "block head2(x, task: str) {\n  return dense_head(x, task = task)\n}\n",
          "parts.mtl")
    (tmp_path / "parts.mtl").symlink_to(tmp_path / "real" / "parts.mtl")
    spec = TINY.replace("out[t] = dense_head(h[t], task = t)", "out[t] = head2(h[t], t)")
    assert load_ir(write(tmp_path, 'import "parts.mtl"\n' + spec), tasks="depth").outputs


# -- operator precedence: every pair, against Python's (the same order for these operators) ------

ARITHMETIC = ["+", "-", "*", "/", "//", "%"]
COMPARISON = ["==", "!=", "<", "<=", ">", ">="]
LOGICAL = ["and", "or"]


def _value(expr: str):
    """The value of a constant expression in the language."""
    from mtl_dsl.errors import Diagnostics
    from mtl_dsl.frontend.consteval import Evaluator
    from mtl_dsl.frontend.values import Scope

    default = parse_source_expr(expr)
    return Evaluator(Diagnostics(), PROFILES["synthetic"]).const(default, Scope({}, None, ""), "v")


def parse_source_expr(expr: str):
    from mtl_dsl.frontend import parse_source

    return parse_source(f"model m(v = {expr}) {{}}").models[0].params[0].default


def _python(expr: str):
    return eval(expr.replace("true", "True").replace("false", "False"))  # noqa: S307 - constants


numbers = st.integers(-9, 9).filter(lambda n: n != 0)


@pytest.mark.parametrize("first", ARITHMETIC)
@pytest.mark.parametrize("second", ARITHMETIC + COMPARISON)
@settings(max_examples=6, deadline=None)
@given(a=numbers, b=numbers, c=numbers)
def test_binary_operators_bind_as_in_python(first, second, a, b, c):
    for expr in (f"{a} {first} {b} {second} {c}", f"{a} {second} {b} {first} {c}"
                 if second in ARITHMETIC else f"{a} {first} {b} {second} {c} {first} {a}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("op", ARITHMETIC)
@settings(max_examples=10, deadline=None)
@given(a=numbers, b=numbers)
def test_unary_minus_binds_tighter_than_every_binary_operator(op, a, b):
    for expr in (f"-{abs(a)} {op} {b}", f"{a} {op} -{abs(b)}", f"- {abs(a)} {op} {b} {op} {b}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("logic", LOGICAL)
@pytest.mark.parametrize("compare", COMPARISON)
@settings(max_examples=6, deadline=None)
@given(a=numbers, b=numbers, flag=st.booleans())
def test_comparisons_bind_tighter_than_and_or_not(logic, compare, a, b, flag):
    word = "true" if flag else "false"
    for expr in (f"{a} {compare} {b} {logic} {word}", f"{word} {logic} {a} {compare} {b}",
                 f"not {a} {compare} {b} {logic} {word}", f"not {word} {logic} {word}"):
        assert _value(expr) == _python(expr), expr


@pytest.mark.parametrize("x,y,z", [(p, q, r) for p in (True, False) for q in (True, False)
                                   for r in (True, False)])
def test_and_binds_tighter_than_or(x, y, z):
    words = {True: "true", False: "false"}
    for expr in (f"{words[x]} or {words[y]} and {words[z]}",
                 f"{words[x]} and {words[y]} or {words[z]}",
                 f"not {words[x]} and {words[y]}", f"not {words[x]} or {words[y]}"):
        assert _value(expr) == _python(expr), expr


def test_comparisons_do_not_chain(tmp_path):
    e = errors_of(write(tmp_path, TINY.replace("dim = 8", "dim = 1 < 2 < 3")))
    assert e.message.startswith("unexpected '<'")
