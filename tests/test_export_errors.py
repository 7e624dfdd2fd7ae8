"""Export failures are told as the spec node behind them, at its line, with why; an exported file
that does not compute what the eager model computes fails the check."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_dsl.api import compile_model
from mtl_dsl.errors import SpecError
from mtl_dsl.export import ExportOptions, export_model


@torch.library.custom_op("mtl_dsl_test::wiggle", mutates_args=())
def wiggle(x: torch.Tensor) -> torch.Tensor:
    """An operator with a kernel and a shape rule (so torch.export takes it) but no ONNX
    translation."""
    return x * 2


@wiggle.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Around(nn.Module):
    """Runs the node's own module, then ``after`` on its output."""

    def __init__(self, inner: nn.Module, after):
        super().__init__()
        self.inner = inner
        self.after = after

    def forward(self, *args):
        return self.after(self.inner(*args))


def branch_on_values(y):
    return y if y.sum() > 0 else -y


def branch_on_batch(y):
    return y * 2 if y.shape[0] == 2 else y


def differ_from_eager(y):
    return y if torch.compiler.is_exporting() else y + 1


def baseline(node: str | None = None, after=None):
    """The small baseline, optionally with node ``node``'s module followed by ``after``; with
    fusion off: each node's own module runs under its own name scope (a fused group of heads runs
    their layers through one batched form, which no single node owns)."""
    torch.manual_seed(0)
    model = compile_model("baseline_mt", tasks="semseg:3,depth", input_size=(32, 48),
                          overrides={"backbone": "resnet18"}, fuse=False).eval()
    if node is not None:
        parent, _, leaf = node.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, Around(getattr(owner, leaf), after))
    return model


def only_diagnostic(error: pytest.ExceptionInfo):
    assert len(error.value.diagnostics) == 1  # one root cause, one error
    return error.value.diagnostics[0]


def test_control_flow_on_tensor_values_names_the_node(tmp_path, capfd):
    model = baseline("out.depth", branch_on_values)
    with pytest.raises(SpecError) as error:
        export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2"))
    d = only_diagnostic(error)
    loc = model.ir.node("out.depth").loc
    assert (d.file, d.line, d.column) == ("baseline_mt.mtl", loc.line, loc.column)
    assert "dense_head(x, task = t, width = dim)" in d.source_line
    assert d.message.startswith("cannot export node 'out.depth' (dense_head) with torch.export: ")
    assert "values inside a tensor" in d.message and "branch_on_values" in d.message
    assert not (tmp_path / "m.pt2").exists()
    assert capfd.readouterr().err == ""  # torch.export's partial program is not printed...
    with pytest.raises(SpecError):
        export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2", verbose=True))
    assert "def forward(" in capfd.readouterr().err  # ...unless asked for


def test_batch_dependent_code_names_the_node_and_exports_with_a_fixed_batch(tmp_path):
    model = baseline("out.semseg", branch_on_batch)
    with pytest.raises(SpecError) as error:
        export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2", dynamic_batch=True))
    d = only_diagnostic(error)
    assert "node 'out.semseg'" in d.message and "depends on the batch size" in d.message
    assert d.hint == "export without --dynamic-batch"
    assert export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2")).ok


def test_operator_without_onnx_translation_names_the_node_and_the_operator(tmp_path):
    model = baseline("x.upsample_concat", wiggle)
    assert export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2")).ok
    with pytest.raises(SpecError) as error:
        export_model(model, tmp_path / "m.onnx", ExportOptions(format="onnx"))
    d = only_diagnostic(error)
    assert (d.file, d.line) == ("baseline_mt.mtl", model.ir.node("x.upsample_concat").loc.line)
    assert "upsample_concat(" in d.source_line
    assert d.message == ("cannot export node 'x.upsample_concat' (upsample_concat) to ONNX: ONNX "
                         "has no translation for the operator mtl_dsl_test.wiggle.default")
    assert not (tmp_path / "m.onnx").exists()


def test_search_supergraph_is_one_error_at_its_first_node(tmp_path):
    torch.manual_seed(0)
    model = compile_model("atrc", tasks="semseg:3,depth", input_size=(32, 32),
                          overrides={"backbone": "resnet18", "dim": 16})
    with pytest.raises(SpecError) as error:
        export_model(model, tmp_path / "m.onnx", ExportOptions(format="onnx"))
    d = only_diagnostic(error)
    assert d.file == "atrc.mtl" and "context_pool(" in d.source_line
    assert d.message.startswith("cannot export node 'res.c.semseg.semseg' (context_pool): it "
                                "belongs to an architecture-search supergraph")
    assert d.notes == ("so are 3 more nodes of the supergraph: res.c.semseg.depth, "
                       "res.c.depth.semseg, res.c.depth.depth",)
    assert "mtl-dsl search" in d.hint


def test_a_file_that_computes_otherwise_than_eager_fails_the_check(tmp_path):
    model = baseline("out.depth", differ_from_eager)
    result = export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2"))
    assert not result.ok
    failed = {d.name: d.max_abs for d in result.differences if not d.ok}
    assert list(failed) == ["depth"] and failed["depth"] == pytest.approx(1.0, abs=1e-5)
    assert [d.ok for d in result.differences if d.name == "semseg"] == [True]


def test_a_file_onnx_runtime_cannot_run_names_the_node_and_is_removed(tmp_path, monkeypatch):
    """The written file holds an operator ONNX Runtime has no kernel for (here: the dense head's
    ReLU moved to an operator set nobody implements)."""
    import dataclasses

    import onnx

    from mtl_dsl.export.formats import FORMATS

    real = FORMATS["onnx"]

    def write_then_break(program, example, path, *rest):
        files = real.write(program, example, path, *rest)
        proto = onnx.load(str(path))
        relu = next(n for n in proto.graph.node if n.op_type == "Relu" and any(
            p.key == "pkg.torch.onnx.name_scopes" and "'model.out.depth'" in p.value
            for p in n.metadata_props))
        relu.domain = "mtl_dsl.test"
        proto.opset_import.append(onnx.helper.make_opsetid("mtl_dsl.test", 1))
        onnx.save(proto, str(path))
        return files

    monkeypatch.setitem(FORMATS, "onnx", dataclasses.replace(real, write=write_then_break))
    with pytest.raises(SpecError) as error:
        export_model(baseline(), tmp_path / "m.onnx", ExportOptions(format="onnx"))
    d = only_diagnostic(error)
    assert d.message.startswith("cannot export node 'out.depth' (dense_head) to ONNX "
                                "(mtl_dsl.test.Relu): ONNX Runtime ")
    assert "cannot run it" in d.message and "--format pt2" in d.hint
    assert not (tmp_path / "m.onnx").exists()
