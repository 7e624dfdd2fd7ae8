"""The MAC counter against hand counts: convolutions, linear layers, matmuls, attention on CPU,
deform_conv2d, per-module attribution, and the list of ops it could not count."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mtl_dsl.flops import count_macs


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.depthwise(self.stem(x))
        return self.fc(x.mean((2, 3)))


def test_conv_and_linear_equal_the_analytic_count():
    batch, h, w = 2, 17, 23
    report = count_macs(ConvLinear(), torch.randn(batch, 3, h, w))
    ho, wo = 9, 12  # stride 2, padding 1: ceil
    stem = batch * 8 * 3 * 3 * 3 * ho * wo
    depthwise = batch * 8 * 1 * 5 * 5 * ho * wo
    fc = batch * 8 * 5
    assert report.total == stem + depthwise + fc
    assert report.per_module["stem"] == report.per_module["stem.0"] == stem
    assert report.per_module["depthwise"] == depthwise
    assert report.per_module["fc"] == fc
    assert report.per_module[""] == report.total
    assert report.uncounted == ()  # BN, ReLU and mean do no multiply-adds


class Attention(nn.Module):
    def forward(self, q, k, v):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        mixed = torch.matmul(scores.softmax(-1), v)
        return mixed + F.scaled_dot_product_attention(q, k, v)


def test_matmuls_einsum_and_cpu_attention_are_counted():
    b, h, nq, nk, d = 2, 3, 7, 11, 16
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, d)
    report = count_macs(Attention(), q, k, v)
    one_attention = b * h * nq * nk * d * 2  # scores and the weighted sum
    assert report.total == 2 * one_attention
    assert report.uncounted == ()


class Deformable(nn.Module):
    def __init__(self):
        super().__init__()
        self.deform = torchvision.ops.DeformConv2d(6, 4, 3, padding=1, groups=2)

    def forward(self, x):
        offsets = torch.randn(x.shape[0], 2 * 9, *x.shape[-2:])
        return self.deform(x, offsets)


def test_deform_conv2d_is_counted_like_fvcore():
    batch, h, w = 2, 9, 13
    report = count_macs(Deformable(), torch.randn(batch, 6, h, w))
    assert report.total == batch * 4 * (6 // 2) * 3 * 3 * h * w
    assert report.per_module["deform"] == report.total
    assert report.uncounted == ()


class WithDistance(nn.Module):
    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        return torch.cdist(tokens, tokens)


def test_an_op_without_a_formula_is_reported():
    report = count_macs(WithDistance(), torch.randn(1, 4, 5, 5))
    assert report.uncounted, "cdist multiplies and adds but has no formula"
    assert any("dist" in op for op in report.uncounted)
    assert "not counted" in report.summary()


class MacFree(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.max_pool2d(F.gelu(y), 2) + F.avg_pool2d(y, 2)
        y = torch.cat([y, F.pad(x, (0, 0, 0, 0)).sigmoid()], dim=1)
        return self.norm(y.permute(0, 2, 3, 1)).softmax(-1).sum()


def test_ops_without_multiply_adds_are_not_reported():
    report = count_macs(MacFree(), torch.randn(1, 2, 6, 6))
    assert report.total == 0 and report.uncounted == ()


def test_counting_leaves_the_model_usable_and_unchanged():
    model = ConvLinear().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, torch.randn(1, 3, 8, 8))
    assert model.training
    assert model(torch.randn(2, 3, 8, 8)).requires_grad
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BN statistics may move in train
            assert torch.equal(value, before[key]), key
