"""docs/blocks.md, run as written: its plugin module and spec check, compile and show the
signature the page prints; its declared-shape example gives the shape it says."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtl_dsl import plugins
from mtl_dsl.api import check_spec, compile_model
from mtl_dsl.blocks import REGISTRY

DOC = Path(__file__).resolve().parent.parent / "docs" / "blocks.md"


def fenced(kind: str) -> list[str]:
    """The page's code blocks of one language ("": no language given), in order."""
    blocks, current, language = [], None, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("```") and current is None:
            current, language = [], line[3:].strip()
        elif line.startswith("```"):
            if language == kind:
                blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.fixture
def doc_plugin(tmp_path, monkeypatch):
    """The page's my_blocks.py and gated.mtl in a folder, the module importable."""
    module, = [b for b in fenced("python") if '"se_gate"' in b]
    (tmp_path / "my_blocks.py").write_text(module)
    spec, = [b for b in fenced("") if "model gated" in b]
    (tmp_path / "gated.mtl").write_text(spec)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    REGISTRY.pop("se_gate", None)
    sys.modules.pop("my_blocks", None)
    if "my_blocks" in plugins._loaded:
        plugins._loaded.remove("my_blocks")


def test_the_complete_example_checks_and_compiles(doc_plugin):
    graph = check_spec(doc_plugin / "gated.mtl", tasks="nyud", plugins=["my_blocks"])
    gates = [n for n in graph.ir.nodes if n.block == "se_gate"]
    assert len(gates) == 4 and graph.types[gates[0].name][0].shape_str() == "[B, 270, H/4, W/4]"
    assert REGISTRY["se_gate"].signature() == "se_gate(x: map, reduction: int = 16) -> out"
    assert "se_gate(x: map, reduction: int = 16) -> out" in DOC.read_text()
    with torch.device("meta"):
        model = compile_model(doc_plugin / "gated.mtl", tasks="nyud", plugins=["my_blocks"])
    gate = model.get_submodule(gates[0].name)
    assert (gate.down.in_channels, gate.down.out_channels) == (270, 270 // 4)  # reduction = 4


def test_the_declared_shape_example(tmp_path):
    halve, = [b for b in fenced("python") if '"halve"' in b]
    namespace: dict = {"__name__": "doc_example"}
    exec(compile("import mtl_dsl\nfrom torch import nn\n" + halve, "docs/blocks.md", "exec"),
         namespace)
    try:
        spec = tmp_path / "h.mtl"
        spec.write_text("model m() {\n  x = halve(conv_bn_act(images, 8))\n  for t in tasks {\n"
                        "    out[t] = conv_bn_act(x, channels(t), kernel = 1)\n  }\n}\n")
        graph = check_spec(spec, tasks="semseg:3", input_size=(17, 30))
        assert graph.types["x"][0].shape_str() == "[B, 4, H/2, W/2]"
        model = compile_model(spec, tasks="semseg:3", input_size=(17, 30))
        assert model(torch.randn(1, 3, 17, 30))["semseg"]["final"].shape == (1, 3, 17, 30)
    finally:
        REGISTRY.pop("halve", None)
