"""The guard against PyTorch's batch-norm backward misreading a gradient at batch one.

A gradient laid out channels-last with an odd batch stride (what the backward of ``tokens(x)``
returns for a batch of one) must give the gradients a contiguous one gives, which finite
differences confirm; compiled models carry the guard on every norm, backbones included.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtl_dsl.api import compile_model
from mtl_dsl.modules.grad_layout import NORMS, guard_norm_gradients


def _token_layout_gradient(b: int, c: int, h: int, w: int, batch_first: bool = True) -> torch.Tensor:
    """A gradient as the backward of tokens hands it back: of ``x.flatten(2).transpose(1, 2)``
    (``[B, N, C]``, a size-one batch's stride left at something other than C*H*W, as views of
    views leave it) or, ``batch_first=False``, of tokens ``[N, B, C]`` (the official DeMT's)."""
    if not batch_first:
        return torch.randn(h * w, b, c, dtype=torch.float64).permute(1, 2, 0).reshape(b, c, h, w)
    g = torch.randn(b, h * w, c, dtype=torch.float64).transpose(1, 2).reshape(b, c, h, w)
    return g.as_strided(g.shape, (c,) + g.stride()[1:]) if b == 1 else g


def _gradients(norm: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    params = [p for p in norm.parameters()]
    return list(torch.autograd.grad(norm(x), [x, *params], grad))


NORM_CASES = [
    ("batchnorm train, batch 1", lambda: nn.BatchNorm2d(6), True, 1, True),
    ("batchnorm eval, batch 1", lambda: nn.BatchNorm2d(6), False, 1, True),
    ("instancenorm, batch 1", lambda: nn.InstanceNorm2d(6, affine=True), True, 1, True),
    ("instancenorm, batch 2, tokens [N, B, C]", lambda: nn.InstanceNorm2d(6, affine=True), True, 2,
     False),
    ("batchnorm train, batch 2", lambda: nn.BatchNorm2d(6), True, 2, True),
    ("batchnorm train, batch 2, tokens [N, B, C]", lambda: nn.BatchNorm2d(6), True, 2, False),
]


@pytest.mark.parametrize("make,training,batch,batch_first", [c[1:] for c in NORM_CASES],
                         ids=[c[0] for c in NORM_CASES])
def test_a_guarded_norm_reads_a_token_layout_gradient_right(make, training, batch, batch_first):
    torch.manual_seed(0)
    norm = make().double().train(training)
    with torch.no_grad():  # running statistics and affine parameters away from 0 / 1
        for t in list(norm.parameters()) + [b for b in norm.buffers() if b.is_floating_point()]:
            t.uniform_(0.5, 1.5)
    assert guard_norm_gradients(norm) == 1
    x = torch.randn(batch, 6, 5, 4, dtype=torch.float64)
    grad = _token_layout_gradient(batch, 6, 5, 4, batch_first)
    for got, expected in zip(_gradients(norm, x, grad), _gradients(norm, x, grad.contiguous())):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # and the contiguous gradient is the right one: finite differences of <norm(x), grad>
    xs = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: (norm(v) * grad).sum(), (xs,))


def test_the_guard_leaves_other_gradients_alone():
    norm = nn.BatchNorm2d(4)
    guard_norm_gradients(norm)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    y = norm(x)
    grad = torch.randn(3, 5, 5, 4).permute(0, 3, 1, 2)  # channels-last at batch 3: read right
    seen = []
    y.register_hook(lambda g: seen.append(g.stride()))
    y.backward(grad)
    assert seen == [grad.stride()]
    assert guard_norm_gradients(norm) == 0  # guarding twice adds nothing


def test_every_norm_of_a_compiled_model_is_guarded():
    model = compile_model("baseline_mt", tasks="nyud", input_size=(32, 32))
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    assert len(norms) > 50  # the HRNet backbone's among them
    assert all(m._forward_hooks for m in norms)


TOKENS_OF_THE_COLLECTION = """model tok(dim = 8) {
  x = conv_bn_act(images, dim, stride = 2)
  for t in tasks {
    s[t] = conv_bn_act(x, dim, kernel = 1, act = "none")
  }
  for t in tasks {
    y[t] = to_map(attention(tokens(s[t]), kv = tokens(s), heads = 2, over = "tasks"))
    out[t] = conv_bn_act(y[t], channels(t), kernel = 1, norm = "none", act = "none")
  }
}
"""


def test_a_compiled_model_at_batch_one_has_the_gradients_of_finite_differences(tmp_path):
    """Each task's map ends in a BatchNorm, and the backward of ``tokens(s)`` (a concatenation
    of the tasks' tokens) hands it a slice of the joint gradient: at batch one, channels-last with
    the batch stride of all tasks' tokens."""
    path = tmp_path / "tok.mtl"
    path.write_text(TOKENS_OF_THE_COLLECTION)
    torch.manual_seed(0)
    model = compile_model(path, tasks="depth,edge", input_size=(8, 8), fuse=False).double().eval()
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    weight = model.s.edge.bn.weight

    def loss() -> torch.Tensor:
        out = model(images)
        return sum((v ** 2).mean() for task in out.values() for v in task.values())

    (analytic,) = torch.autograd.grad(loss(), weight)
    numeric = torch.zeros_like(weight)
    with torch.no_grad():
        for i in range(weight.numel()):
            keep = weight[i].item()
            weight[i] = keep + 1e-6
            up = loss()
            weight[i] = keep - 1e-6
            down = loss()
            weight[i] = keep
            numeric[i] = (up - down) / 2e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)
