"""The documentation's Python examples run as written (docs/api.md): the API they show exists and
returns what they say."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtl_dsl.blocks import REGISTRY

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_api_doc_has_the_examples_it_promises():
    blocks = python_blocks(DOCS / "api.md")
    assert len(blocks) == 5
    assert any("MultiTaskCriterion" in b for b in blocks) and any("@register" in b for b in blocks)
    assert any("export_model(" in b for b in blocks)


@pytest.mark.parametrize("index", range(5))
def test_api_doc_example_runs(index):
    code = python_blocks(DOCS / "api.md")[index]
    before = set(REGISTRY)
    try:
        exec(compile(code, f"docs/api.md example {index + 1}", "exec"), {"__name__": "doc_example"})
    finally:
        for name in set(REGISTRY) - before:
            del REGISTRY[name]


def test_a_registered_doc_block_compiles_in_a_spec(tmp_path):
    code = python_blocks(DOCS / "api.md")[3]
    namespace: dict = {"__name__": "doc_example"}
    exec(compile(code, "docs/api.md example 4", "exec"), namespace)
    try:
        spec = tmp_path / "gated.mtl"
        spec.write_text("model gated() {\n  x = conv_bn_act(images, 8, stride = 4)\n"
                        "  for t in tasks {\n    out[t] = dense_head(gate(x, kernel = 3), task = t)\n"
                        "  }\n}\n")
        model = namespace["compile_model"](spec, tasks="semseg:3", input_size=(16, 16))
        gates = [m for m in model.modules() if type(m).__name__ == "Gate"]
        assert len(gates) == 1 and gates[0].conv.kernel_size == (3, 3)
    finally:
        del REGISTRY["gate"]


def test_the_language_reference_opening_example_checks(tmp_path):
    """docs/language.md's first example is a whole spec: it imported a file that does not exist
    ("common.mtl") and gave task_interaction tokens where it takes the per-task collection."""
    text = re.findall(r"```\n(.*?)```", (DOCS / "language.md").read_text(), re.S)[0]
    assert text.startswith("# DeMT") and "model demt(" in text
    spec = tmp_path / "demt_doc.mtl"
    spec.write_text(text)
    from mtl_dsl.api import check_spec

    graph = check_spec(spec, tasks="semseg:5,depth", input_size=(64, 64))
    assert graph.types["f"][0].__class__.__name__ == "TaskMap"
    assert [o.task for o in graph.ir.outputs] == ["semseg", "depth"]


def _shell_examples() -> list[tuple[str, str]]:
    """(where, text) of every shell example: the bash blocks of README.md and docs/, and the
    examples of `mtl-dsl tune --help`."""
    from mtl_dsl.cli.tune import EPILOG

    found = []
    for path in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(),
                                             re.S)):
            found.append((f"{path.name} bash block {i + 1}", block))
    found.append(("mtl-dsl tune --help", EPILOG.split("examples", 1)[1].split("\n", 1)[1]))
    return found


def test_shell_examples_are_valid_shell_and_their_search_values_parse():
    """README's sweep example had `--search optimizer.lr=loguniform(1e-4,1e-2)` unquoted: bash
    stops at the `(` with a syntax error before mtl-dsl runs."""
    import shlex
    import subprocess

    from mtl_dsl.runtime.sweep_space import parse_search_flag

    searches = 0
    for where, text in _shell_examples():
        checked = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert checked.returncode == 0, f"{where}: {checked.stderr}"
        words = shlex.split(text.replace("\\\n", " "), comments=True)
        for flag, value in zip(words, words[1:]):
            if flag == "--search":
                parse_search_flag(value)  # raises on a value the shell would have mangled
                searches += 1
    assert searches >= 6  # README's and the help's examples
