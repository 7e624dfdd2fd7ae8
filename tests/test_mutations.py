"""Random mutations of valid specs give a SpecError (or a valid graph), never anything else; and
one mistake gives one error."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec
from mtl_dsl.checker import check_ir
from mtl_dsl.errors import SpecError
from mtl_dsl.frontend import iter_builtin_specs
from mtl_dsl.ir import ModelIR

SEEDS = {p.name: p.read_text() for p in iter_builtin_specs()}
TOKENS = ["(", ")", "[", "]", "{", "}", ",", "=", "::", ".", "<-", "for", "in", "if", "else",
          "model", "block", "return", "import", "table", "preset", "tasks", "images", "out", "t",
          "x", "1e9", "-1", "0", "\"\"", "\"x.mtl\"", "true", "none", "*", "//", "#", "\n", "\x00",
          "é", "'", "conv_bn_act", "dense_head", "backbone", "99999999999999999999"]
PROFILES = ["nyud", "pascal", "synthetic", "depth,edge", None]


@st.composite
def mutated(draw):
    """(spec name, mutated text, number of edits)."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    text = SEEDS[name]
    edits = draw(st.integers(1, 3))
    for _ in range(edits):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "delete":
            j = min(len(text), i + draw(st.integers(1, 12)))
            text = text[:i] + text[j:]
        elif kind == "replace":
            j = min(len(text), i + draw(st.integers(1, 6)))
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        else:
            j = min(len(text), i + draw(st.integers(1, 80)))
            text = text[:j] + text[i:j] + text[j:]
    return name, text, edits


def _check(name: str, text: str, tasks: str | None):
    """check_spec of the mutated file alone in a fresh folder (its imports: the built-in specs)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name  # same name: relative imports of the built-in specs resolve
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        return check_spec(path, tasks=tasks)


def _assert_well_formed(e: SpecError) -> None:
    rendered = str(e)
    assert rendered and all(d.line >= 1 and d.column >= 1 and d.message for d in e.diagnostics)
    assert rendered.startswith(f"{e.diagnostics[0].file}:{e.diagnostics[0].line}:")


def _assert_valid_graph(graph) -> None:
    """What a spec that checks clean guarantees: typed nodes, one final output per task with the
    task's channels, and an IR that checks again, alone, to the same types."""
    ir = graph.ir
    assert set(graph.types) >= {n.name for n in ir.nodes}
    finals = {o.task: o for o in ir.outputs if o.name == "final"}
    assert set(finals) == {t.name for t in ir.tasks}
    for t in ir.tasks:
        out = finals[t.name].value
        assert graph.types[out.node][out.index].channels == t.channels
    again = check_ir(ModelIR.from_json(ir.to_json()))
    assert again.types == graph.types


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated(), tasks=st.sampled_from(PROFILES))
def test_mutated_specs_fail_only_with_spec_errors(case, tasks):
    name, text, _ = case
    try:
        graph = _check(name, text, tasks)
    except SpecError as e:
        _assert_well_formed(e)
    else:
        _assert_valid_graph(graph)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_one_error_per_mistake_over_a_fixed_corpus_of_mutations(case):
    """A fixed (derandomized) corpus: every mutation of a shipped spec, checked with the spec's
    own default profile, gives at most one error per edit. Cascades (names whose definition
    failed, one line failing per task, a syntax error's continuation lines, a lost brace) are
    folded or suppressed."""
    name, text, edits = case
    try:
        _check(name, text, None)
    except SpecError as e:
        _assert_well_formed(e)
        assert len(e.diagnostics) <= edits, str(e)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_the_corpus_starts_from_specs_that_check_clean(name):
    _assert_valid_graph(_check(name, SEEDS[name], None))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400))
def test_binary_junk_fails_with_spec_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "junk.mtl"
        path.write_bytes(data)
        with pytest.raises(SpecError) as info:
            check_spec(path)
    _assert_well_formed(info.value)
