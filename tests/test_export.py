"""Export to ONNX and torch.export: every reference spec's file, run again by ONNX Runtime or
``torch.export.load``, equals the eager model (1e-4 / 1e-5 abs; 1e-2 in float16) at batch 1 and 3;
ONNX Runtime's DeformConv is torchvision's; nodes that cannot be exported are named."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_dsl.api import compile_model
from mtl_dsl.errors import SpecError
from mtl_dsl.export import ExportOptions, export_model
from mtl_dsl.export import run as export_run
from mtl_dsl.modules.atrc import LocalContext
from mtl_dsl.tasks import IMAGENET_MEAN, IMAGENET_STD

R18 = {"backbone": "resnet18"}
# Small backbones and inputs; non-square inputs so that a swapped H and W shows.
CASES = {
    "baseline_mt": dict(spec="baseline_mt", tasks="semseg:3,depth", size=(32, 48), overrides=R18),
    "demt": dict(spec="demt", tasks="semseg:3,depth", size=(32, 40),
                 overrides={**R18, "dim": 16}),
    "tpanet": dict(spec="tpanet", tasks="semseg:3,depth", size=(32, 40),
                   overrides={**R18, "dim": 12}),
    # the spec states its profile (NYUD's four tasks, the searched genotype: T-label, S-label and
    # global contexts); a smaller input and backbone
    "atrc_nyud_hrnet18": dict(spec="atrc_nyud_hrnet18", tasks="nyud", size=(32, 40),
                              overrides={**R18, "dim": 16}),
    # one task: one local CP block (semseg <- semseg), computed in two row chunks
    "atrc_local": dict(spec="atrc", preset="local", tasks="semseg:3", size=(40, 48),
                       overrides={**R18, "dim": 16}),
    "invpt": dict(spec="invpt", tasks="semseg:5,depth", size=(64, 96),
                  overrides={"backbone": "test_vit", "levels": [1, 2, 3], "width": 32,
                             "pred_width": 16}),
}
EXPECTED_OUTPUTS = {  # with --with-aux, in task order
    "baseline_mt": ["semseg", "depth"],
    "demt": ["semseg", "depth"],
    "tpanet": ["semseg", "depth"],
    "atrc_nyud_hrnet18": ["semseg", "semseg.aux", "depth", "depth.aux", "normals", "normals.aux",
                          "edge", "edge.aux"],
    "atrc_local": ["semseg"],
    "invpt": ["semseg", "semseg.inter", "depth", "depth.inter"],
}
BOUND = {"onnx": 1e-4, "pt2": 1e-5}
# Operators the ONNX file must hold: DeMT's deformable convolution is ONNX's own DeformConv (which
# ONNX Runtime runs), one per task's deformable mixer, not a decomposition.
# demt: its two tasks' deformable mixers run as ONE DeformConv (cross-task fusion, on by default)
ONNX_OPERATORS = {"demt": {"DeformConv": 1, "GridSample": 0}}


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from 0/1, so that folding BatchNorm into the
    convolutions (as ONNX Runtime does) is exercised for real."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))


_MODELS: dict[str, torch.nn.Module] = {}


def small_model(case: str) -> torch.nn.Module:
    if case not in _MODELS:
        c = CASES[case]
        torch.manual_seed(0)
        model = compile_model(c["spec"], tasks=c["tasks"], input_size=c["size"],
                              overrides=c["overrides"], preset=c.get("preset"))
        perturb_norms(model)
        if case == "atrc_local":  # several row chunks, as at real sizes
            blocks = [m for m in model.modules() if isinstance(m, LocalContext)]
            assert len(blocks) == 1
            blocks[0].chunk_elements = 8 * 81 * 12 * 5  # 10 rows of 8 channels: 5 + 5
        _MODELS[case] = model.eval()
    return _MODELS[case]


def eager(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The compiled model on normalised images, outputs named as the exported file names them."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model((images - mean) / std)
    return {(t if k == "final" else f"{t}.{k}"): v for t, o in out.items() for k, v in o.items()}


def run_file(fmt: str, path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The written file, read back by its own runtime."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        arrays = session.run(None, {"images": images.numpy()})
        return {o.name: torch.from_numpy(a) for o, a in zip(session.get_outputs(), arrays)}
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return dict(module(images))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``get(case, fmt)``: the case's model exported with a dynamic batch and every output (each
    export done once per module; several tests read the same file). Both formats of a case are
    written from one ``torch.export`` trace, as one ``mtl-dsl export`` run writes its file from
    one trace: the check of each file against the eager model is unchanged."""
    done: dict = {}
    programs: dict = {}
    real_trace = export_run.trace

    def shared_trace(deploy, model, example, dynamic_batch):
        key = (id(model), dynamic_batch, deploy.half, deploy.normalize, tuple(deploy.selection))
        if key not in programs:
            programs[key] = real_trace(deploy, model, example, dynamic_batch)
        return programs[key]

    def get(case: str, fmt: str):
        if (case, fmt) not in done:
            path = tmp_path_factory.mktemp(f"{case}-{fmt}") / f"model.{fmt}"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(export_run, "trace", shared_trace)
                result = export_model(small_model(case), path,
                                      ExportOptions(format=fmt, dynamic_batch=True, with_aux=True))
            done[case, fmt] = result, path
        return done[case, fmt]

    return get


# -- every reference spec, both formats, a dynamic batch --------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_file_equals_eager_pytorch_at_batch_1_and_3(case, fmt, exported):
    model = small_model(case)
    result, path = exported(case, fmt)
    assert [o.name for o in result.outputs] == EXPECTED_OUTPUTS[case]
    assert result.ok and sorted({d.batch for d in result.differences}) == [1, 3]
    h, w = CASES[case]["size"]
    if fmt == "onnx":
        inputs, outputs = onnx_interface(path)
        assert inputs == [("images", ["batch", 3, h, w])]
        assert [(n, s[0], s[2:]) for n, s in outputs] == [
            (n, "batch", [h, w]) for n in EXPECTED_OUTPUTS[case]]
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        for op, count in ONNX_OPERATORS.get(case, {}).items():
            assert ops.count(op) == count, op
    for batch in (1, 3):
        images = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        expected, got = eager(model, images), run_file(fmt, path, images)
        assert list(got) == EXPECTED_OUTPUTS[case]
        for name, value in expected.items():
            assert got[name].shape == value.shape == (batch, value.shape[1], h, w)
            assert got[name].dtype == torch.float32
            assert float((got[name] - value).abs().max()) <= BOUND[fmt], name


def onnx_interface(path) -> tuple[list, list]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ([(i.name, i.shape) for i in session.get_inputs()],
            [(o.name, o.shape) for o in session.get_outputs()])


def test_static_export_has_batch_1(tmp_path):
    model = small_model("baseline_mt")
    result = export_model(model, tmp_path / "m.pt2", ExportOptions(format="pt2"))
    assert [d.batch for d in result.differences] == [1, 1]
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert dict(module(torch.rand(1, 3, 32, 48)))["semseg"].shape == (1, 3, 32, 48)
    with pytest.raises(Exception, match="(?i)size|shape|dim"):
        module(torch.rand(2, 3, 32, 48))


# -- float16 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, case", [*(("onnx", c) for c in CASES), ("pt2", "baseline_mt")])
def test_fp16_export_computes_in_half_and_stays_within_1e_2(fmt, case, tmp_path):
    model = small_model(case)  # DeMT: ONNX Runtime's DeformConv in float16 too
    path = tmp_path / f"half.{fmt}"
    result = export_model(model, path, ExportOptions(format=fmt, fp16=True))
    assert result.ok and [d.batch for d in result.differences] == [1] * len(result.differences)
    if fmt == "onnx":
        weights = onnx.load(str(path)).graph.initializer
        kinds = {w.data_type for w in weights if len(w.dims) == 4 and w.dims[0] > 1}  # conv weights
        assert kinds == {onnx.TensorProto.FLOAT16}
    else:
        program = torch.export.load(str(path))
        assert {p.dtype for p in program.state_dict.values() if p.dim() == 4} == {torch.float16}
        assert program.module().mean.dtype == torch.float32  # the normalisation stays float32
    images = torch.rand(1, 3, *CASES[case]["size"], generator=torch.Generator().manual_seed(7))
    expected, got = eager(model, images), run_file(fmt, path, images)
    finals = [n for n in EXPECTED_OUTPUTS[case] if "." not in n]  # no --with-aux
    assert list(got) == finals
    diffs = [float((got[n] - expected[n]).abs().max()) for n in finals]
    assert all(got[n].dtype == torch.float32 for n in got)
    assert max(diffs) <= 1e-2
    assert max(diffs) > 1e-6  # the computation did change precision


# -- the input normalisation ------------------------------------------------------------------------

def test_normalisation_inside_the_graph_or_left_to_the_caller(tmp_path, exported):
    model = small_model("baseline_mt")
    _, inside = exported("baseline_mt", "pt2")
    raw = tmp_path / "raw.pt2"
    export_model(model, raw, ExportOptions(format="pt2", normalize=False))
    images = torch.rand(1, 3, 32, 48)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    a = run_file("pt2", inside, images)
    b = run_file("pt2", raw, (images - mean) / std)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert not torch.allclose(run_file("pt2", raw, images)["semseg"], a["semseg"], atol=1e-3)
    described = json.loads((tmp_path / "raw.pt2.json").read_text())
    assert described["input"]["normalization"]["inside_graph"] is False
    assert described["input"]["normalization"]["mean"] == [0.485, 0.456, 0.406]


def test_description_beside_and_inside_the_file(exported):
    model = small_model("atrc_nyud_hrnet18")
    result, path = exported("atrc_nyud_hrnet18", "pt2")
    beside = json.loads((path.parent / "model.pt2.json").read_text())
    assert result.sidecar == path.parent / "model.pt2.json"
    assert beside["input"] == {
        "name": "images", "shape": ["batch", 3, 32, 40], "dtype": "float32", "layout": "NCHW, RGB",
        "normalization": {"inside_graph": True, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "input_range": [0.0, 1.0],
                          "applied": "(images - mean) / std, per channel, inside the graph"}}
    assert [(o["name"], o["shape"][1]) for o in beside["outputs"]] == [
        ("semseg", 40), ("semseg.aux", 40), ("depth", 1), ("depth.aux", 40), ("normals", 3),
        ("normals.aux", 40), ("edge", 1), ("edge.aux", 2)]
    assert beside["params"]["dim"] == 16 and beside["model"] == "atrc_nyud_hrnet18"
    results = beside["check"]["results"]
    assert len(results) == 16 and all(r["ok"] for r in results)  # 8 outputs at batch 1 and 3
    extra = {"mtl_dsl.json": ""}
    torch.export.load(str(path), extra_files=extra)
    inside = json.loads(extra["mtl_dsl.json"])
    assert inside["outputs"] == beside["outputs"] and inside["graph_hash"] == model.ir.graph_hash()


# -- ONNX Runtime's DeformConv is torchvision's deform_conv2d ------------------------------------------

def _deform_conv_session(cin: int, cout: int, kernel: int, offset_groups: int, size: tuple):
    from onnx import TensorProto, helper

    h, w = size
    node = helper.make_node("DeformConv", ["X", "W", "offset", "B"], ["Y"],
                            pads=[kernel // 2] * 4, offset_group=offset_groups)
    graph = helper.make_graph(
        [node], "deform",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cin, h, w]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [cout, cin, kernel, kernel]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT,
                                       [1, 2 * offset_groups * kernel * kernel, h, w]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [cout])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 6), kernel=st.sampled_from([1, 3]), h=st.integers(2, 9),
       w=st.integers(2, 9), per_channel=st.booleans(), reach=st.floats(0.0, 12.0),
       seed=st.integers(0, 2**16))
def test_onnx_runtime_deform_conv_equals_torchvision(cin, kernel, h, w, per_channel, reach, seed):
    """Fractional offsets, offsets far outside the map, one offset group per channel (DeMT) or
    one for all: ONNX Runtime's DeformConv samples exactly as torchvision's deform_conv2d."""
    from torchvision.ops import deform_conv2d

    g = torch.Generator().manual_seed(seed)
    groups = cin if per_channel else 1
    x = torch.randn(1, cin, h, w, generator=g)
    weight = torch.randn(3, cin, kernel, kernel, generator=g)
    bias = torch.randn(3, generator=g)
    offset = (torch.rand(1, 2 * groups * kernel * kernel, h, w, generator=g) * 2 - 1) * reach
    expected = deform_conv2d(x, offset, weight, bias, padding=kernel // 2)
    session = _deform_conv_session(cin, 3, kernel, groups, (h, w))
    (got,) = session.run(None, {"X": x.numpy(), "W": weight.numpy(), "offset": offset.numpy(),
                                "B": bias.numpy()})
    assert np.abs(got - expected.numpy()).max() <= 1e-4
