"""Random mutations of valid specs give a SpecError (or a valid graph), never anything else."""
from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_dsl.api import check_spec
from mtl_dsl.errors import SpecError
from mtl_dsl.frontend import iter_builtin_specs

SEEDS = {p.name: p.read_text() for p in iter_builtin_specs()}
TOKENS = ["(", ")", "[", "]", "{", "}", ",", "=", "::", ".", "<-", "for", "in", "if", "else",
          "model", "block", "return", "import", "table", "preset", "tasks", "images", "out", "t",
          "x", "1e9", "-1", "0", "\"\"", "\"x.mtl\"", "true", "none", "*", "//", "#", "\n", "\x00",
          "é", "'", "conv_bn_act", "dense_head", "backbone", "99999999999999999999"]


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    text = SEEDS[name]
    for _ in range(draw(st.integers(1, 3))):
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
    return name, text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(), tasks=st.sampled_from(["nyud", "pascal", "synthetic", "depth,edge"]))
def test_mutated_specs_fail_only_with_spec_errors(tmp_path, case, tasks):
    name, text = case
    path = tmp_path / name  # same name: relative imports of the built-in specs still resolve
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        check_spec(path, tasks=tasks)
    except SpecError as e:
        rendered = str(e)
        assert rendered and all(d.line >= 1 and d.column >= 1 for d in e.diagnostics)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_binary_junk_fails_with_spec_error(tmp_path, data):
    path = tmp_path / "junk.mtl"
    path.write_bytes(data)
    try:
        check_spec(path)
    except SpecError:
        pass
