"""Losses and loss weighting against hand computations on tiny tensors (the official losses:
github.com/brdav/atrc, src/model/criterion.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_dsl.runtime.losses import (MultiTaskCriterion, balanced_cross_entropy, cross_entropy,
                                    depth_bins, depth_l1, load_centroids, normals_clusters,
                                    normals_l1, weighted_bce)
from mtl_dsl.runtime.weighting import build_weighting, dwa_lambdas


def _log_softmax(row):
    m = max(row)
    return [v - m - math.log(sum(math.exp(u - m) for u in row)) for v in row]


def test_cross_entropy_ignores_255_and_means_over_valid_pixels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 3.0]]]])  # B=1, C=3, H=1, W=2
    target = torch.tensor([[[0, 255]]])
    expected = -_log_softmax([2.0, 0.0, 1.0])[0]
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    target = torch.tensor([[[0, 2]]])
    expected = (-_log_softmax([2.0, 0.0, 1.0])[0] - _log_softmax([0.0, 1.0, 3.0])[2]) / 2
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 7, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_balanced_saliency_ce_uses_batch_negative_fraction():
    logits = torch.tensor([[[[1.0, 0.0, -1.0, 0.5]], [[0.0, 2.0, 0.0, 0.0]]]])  # C=2, 1x4
    target = torch.tensor([[[0, 1, 1, 255]]])
    w_pos = 1 / 3  # one negative of three valid pixels
    weights = [1 - w_pos, w_pos]
    nll = [-_log_softmax([1.0, 0.0])[0], -_log_softmax([0.0, 2.0])[1], -_log_softmax([-1.0, 0.0])[1]]
    labels = [0, 1, 1]
    expected = sum(weights[y] * l for y, l in zip(labels, nll)) / sum(weights[y] for y in labels)
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_depth_l1_on_valid_pixels_only():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.5, 255.0], [2.0, 255.0]]]])
    assert depth_l1(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)


def test_normals_l1_normalises_prediction_sums_channels_divides_by_valid_pixels():
    pred = torch.tensor([[[[3.0, 1.0]], [[0.0, 1.0]], [[4.0, 1.0]]]])  # two pixels
    target = torch.tensor([[[[0.0, 255.0]], [[0.0, 255.0]], [[1.0, 255.0]]]])
    # pixel 0: unit = (0.6, 0, 0.8) vs (0, 0, 1): |0.6| + 0 + |0.2| = 0.8; pixel 1 invalid
    assert normals_l1(pred, target).item() == pytest.approx(0.8, rel=1e-6)


def test_weighted_bce_for_edges():
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 255.0]]]])
    w = 0.95
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (-w * math.log(sig(0.0)) - (1 - w) * math.log(1 - sig(2.0))) / 2
    assert weighted_bce(logits, target, w).item() == pytest.approx(expected, rel=1e-6)


def test_depth_bins_are_atrc_log_bins():
    depth = torch.tensor([[[[0.5, 0.7, 1.0, 9.99, 50.0, 255.0]]]])
    bins = depth_bins(depth)[0, 0].tolist()
    one = math.floor(40 * math.log(1.0 / 0.7) / math.log(10 / 0.7))
    assert bins == [0, 0, one, 39, 39, 255]


def test_normal_clusters_pick_the_nearest_centroid():
    centroids = torch.from_numpy(load_centroids("nyu")).float()
    assert centroids.shape == (40, 3)
    normals = torch.stack([centroids[7], centroids[21] * 0.999 + 0.001, torch.full((3,), 255.0)], 1)
    labels = normals_clusters(normals.view(1, 3, 1, 3), centroids)
    assert labels.tolist() == [[[7, 21, 255]]]


def test_criterion_sums_final_aux_and_intermediate_outputs():
    torch.manual_seed(0)
    tasks = ["semseg", "depth", "normals", "edge", "sal"]
    crit = MultiTaskCriterion(tasks, edge_pos_weight=0.8, centroids="nyu")
    h = w = 4
    batch = {"semseg": torch.randint(0, 5, (2, h, w)), "depth": torch.rand(2, 1, h, w) * 5 + 1,
             "normals": torch.nn.functional.normalize(torch.randn(2, 3, h, w), dim=1),
             "edge": (torch.rand(2, 1, h, w) > 0.7).float(), "sal": torch.randint(0, 2, (2, h, w))}
    outputs = {"semseg": {"final": torch.randn(2, 5, h, w), "aux": torch.randn(2, 5, h, w)},
               "depth": {"final": torch.rand(2, 1, h, w), "aux": torch.randn(2, 40, h, w),
                         "inter": torch.rand(2, 1, h, w)},
               "normals": {"final": torch.randn(2, 3, h, w), "aux": torch.randn(2, 40, h, w)},
               "edge": {"final": torch.randn(2, 1, h, w), "aux": torch.randn(2, 2, h, w)},
               "sal": {"final": torch.randn(2, 2, h, w)}}
    losses = crit(outputs, batch)
    o, b = outputs, batch
    assert losses["semseg"].item() == pytest.approx(
        (cross_entropy(o["semseg"]["final"], b["semseg"]) + cross_entropy(o["semseg"]["aux"], b["semseg"])).item())
    assert losses["depth"].item() == pytest.approx(
        (depth_l1(o["depth"]["final"], b["depth"]) + depth_l1(o["depth"]["inter"], b["depth"])
         + cross_entropy(o["depth"]["aux"], depth_bins(b["depth"]))).item())
    assert losses["normals"].item() == pytest.approx(
        (normals_l1(o["normals"]["final"], b["normals"])
         + cross_entropy(o["normals"]["aux"], normals_clusters(b["normals"], crit.centroids))).item())
    edge_aux = cross_entropy(o["edge"]["aux"], b["edge"][:, 0].long(), torch.tensor([0.2, 0.8]))
    assert losses["edge"].item() == pytest.approx(
        (weighted_bce(o["edge"]["final"], b["edge"], 0.8) + edge_aux).item())
    assert losses["sal"].item() == pytest.approx(balanced_cross_entropy(o["sal"]["final"], b["sal"]).item())


def test_fixed_weighting_multiplies_each_task_weight():
    weighting = build_weighting("fixed", ["semseg", "edge"], {"semseg": 1.0, "edge": 50.0})
    total = weighting({"semseg": torch.tensor(2.0), "edge": torch.tensor(0.1)})
    assert total.item() == pytest.approx(2.0 + 5.0)


def test_uncertainty_weighting_formula_and_gradient():
    weighting = build_weighting("uncertainty", ["semseg", "depth"], {"semseg": 1.0, "depth": 2.0})
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -1.0]))
    total = weighting({"semseg": torch.tensor(3.0), "depth": torch.tensor(4.0)})
    expected = math.exp(-0.5) * 3.0 + 0.25 + 0.5 * math.exp(1.0) * 2.0 * 4.0 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds of c·exp(-s)·L + s/2 = -c·exp(-s)·L + 1/2
    assert weighting.log_vars.grad.tolist() == pytest.approx([-math.exp(-0.5) * 3 + 0.5,
                                                               -0.5 * math.exp(1.0) * 8 + 0.5], rel=1e-6)


def test_dwa_weights_after_two_intervals():
    weighting = build_weighting("dwa", ["semseg", "depth"], {"semseg": 1.0, "depth": 1.0},
                                dwa_temperature=2.0, dwa_interval=2)
    losses = {"semseg": torch.tensor(1.0), "depth": torch.tensor(1.0)}
    for step, value in enumerate([[4.0, 2.0], [4.0, 2.0], [2.0, 2.0], [2.0, 2.0]]):
        assert weighting(losses).item() == pytest.approx(2.0)  # lambdas are 1 until two intervals
        weighting.observe(step, torch.tensor(value))
    r = np.array([2.0 / 4.0, 2.0 / 2.0])
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    assert weighting.lambdas.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert dwa_lambdas(torch.tensor([2.0, 2.0]), torch.tensor([4.0, 2.0]), 2.0).tolist() == \
        pytest.approx(expected.tolist(), rel=1e-6)
    state = weighting.state_dict()
    again = build_weighting("dwa", ["semseg", "depth"], {"semseg": 1.0, "depth": 1.0}, 2.0, 2)
    again.load_state_dict(state)
    assert again.lambdas.tolist() == weighting.lambdas.tolist()
