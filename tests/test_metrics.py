"""Dataset-pooled metrics against hand-computed values, DDP-style state merging and Delta_m."""
import math

import pytest
import torch

from mtl_dsl.runtime.baseline import BaselineError, delta_m, format_metrics_table, load_baseline
from mtl_dsl.runtime.metrics import (
    METRIC_DIRECTIONS, BoundaryOdsF, DepthRMSE, MeanIoU, MetricSet, NormalsError, SaliencyMaxF,
    angular_error_deg, disk_max,
)
from mtl_dsl.tasks import PROFILES


def one_hot_logits(labels, classes):
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_miou_counts_an_absent_class_as_zero_and_ignores_255():
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])  # the 255 pixel's prediction does not count
    m = MeanIoU("semseg", 3)
    m.update(one_hot_logits(pred, 3), target)
    # class 0: I=1, U=2; class 1: I=1, U=2; class 2: never seen -> 0
    assert m.compute()["semseg/mIoU"] == pytest.approx(100 * (0.5 + 0.5 + 0.0) / 3)


def test_miou_pools_over_images():
    m = MeanIoU("human_parts", 2)
    m.update(one_hot_logits(torch.tensor([[[1, 1]]]), 2), torch.tensor([[[1, 1]]]))
    m.update(one_hot_logits(torch.tensor([[[1, 0, 0, 0]]]), 2), torch.tensor([[[1, 1, 0, 0]]]))
    # class 0: I=2, U=3; class 1: I=3, U=4  (a per-image mean would give something else)
    assert m.compute()["human_parts/mIoU"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)


def test_miou_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="label 5"):
        MeanIoU("semseg", 3).update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 5]]]))


def test_depth_rmse_is_pixel_pooled_and_clamps_predictions():
    m = DepthRMSE()
    # image 1: one valid pixel, error 2; image 2: three valid pixels, error 1 each
    m.update(torch.tensor([[[[3.0, 9.0]]]]), torch.tensor([[[[1.0, 255.0]]]]))
    m.update(torch.tensor([[[[2.0, 2.0, 2.0]]]]), torch.tensor([[[[1.0, 3.0, 1.0]]]]))
    pooled = m.compute()["depth/rmse"]
    assert pooled == pytest.approx(math.sqrt((4 + 3) / 4))
    assert pooled != pytest.approx((2 + 1) / 2)  # the per-image mean differs
    clamped = DepthRMSE()
    clamped.update(torch.tensor([[[[-5.0]]]]), torch.tensor([[[[1.0]]]]))
    assert clamped.compute()["depth/rmse"] == pytest.approx(1.0)


def test_angular_error_of_known_vectors():
    p = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [-1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 3.0]]).T[None, :, :, None]
    g = torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]).T[None, :, :, None]
    angles = angular_error_deg(p, g)[0, :, 0]
    torch.testing.assert_close(angles, torch.tensor([90.0, 0.0, 180.0, 45.0, 0.0], dtype=torch.float64))


def test_normals_statistics():
    m = NormalsError()
    p = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 1.0, 0], [0, 1.0, 0], [5.0, 5.0, 5.0]]).T[None, :, :, None]
    g = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 1.0, 0], [255.0, 255.0, 255.0]]).T[None, :, :, None]
    m.update(p, g)
    out = m.compute()  # valid angles: 0, 90, 45, 0 (the last pixel is ignored)
    assert out["normals/mean"] == pytest.approx(135 / 4)
    assert out["normals/median"] == pytest.approx(0.0, abs=0.01)
    assert out["normals/within_11.25"] == pytest.approx(50.0)
    assert out["normals/within_30"] == pytest.approx(50.0)
    m2 = NormalsError()
    m2.update(p[:, :, 1:4], g[:, :, 1:4])  # 90, 45, 0 -> median 45
    assert m2.compute()["normals/median"] == pytest.approx(45.0, abs=0.01)


def test_saliency_maxf_on_a_toy():
    prob = torch.tensor([0.9, 0.4, 0.6, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(prob / (1 - prob))])[None, :, None, :]  # (1, 2, 1, 4)
    target = torch.tensor([[[1, 1, 0, 0]]])
    m = SaliencyMaxF()
    m.update(logits, target)
    # best threshold in (0.6, 0.9]: P = 1, R = 1/2 -> F = 1.3 * 0.5 / (0.3 + 0.5) = 0.8125
    assert m.compute()["sal/maxF"] == pytest.approx(81.25)
    m.update(logits[..., :1], torch.tensor([[[255]]]))  # ignored pixels change nothing
    assert m.compute()["sal/maxF"] == pytest.approx(81.25)


def _line_target(h=12, w=12, col=5):
    t = torch.zeros(1, 1, h, w)
    t[0, 0, :, col] = 1
    return t


def test_odsf_perfect_shifted_and_spurious():
    target = _line_target()
    exact = BoundaryOdsF(0.11)  # radius 0.11 * diag(12x12) = 1.87 px
    exact.update(target * 20 - 10, target)
    assert exact.compute()["edge/odsF"] == pytest.approx(100.0)
    shifted = BoundaryOdsF(0.11)
    shifted.update(torch.roll(target, 1, dims=3) * 20 - 10, target)
    assert shifted.compute()["edge/odsF"] == pytest.approx(100.0)  # one pixel off: within tolerance
    far = BoundaryOdsF(0.11)
    far.update(torch.roll(target, 4, dims=3) * 20 - 10, target)
    assert far.compute()["edge/odsF"] == pytest.approx(0.0)
    # A spurious pixel at p = 0.3 only hurts thresholds <= 0.3; the best threshold drops it.
    logits = torch.full_like(target, -10.0)
    logits[target == 1] = math.log(0.8 / 0.2)
    logits[0, 0, 0, 11] = math.log(0.3 / 0.7)
    spurious = BoundaryOdsF(0.11)
    spurious.update(logits, target)
    assert spurious.compute()["edge/odsF"] == pytest.approx(100.0)
    state = spurious.state
    t03 = 29  # threshold 0.30
    assert state["predictions"][t03] == 13 and state["matched_predictions"][t03] == 12


def test_odsf_ignores_padding_outside_the_content():
    target = torch.full((1, 1, 14, 14), 255.0)
    target[0, 0, 1:13, 1:13] = _line_target()[0, 0]
    logits = torch.where(target == 1, 10.0, -10.0)
    logits[0, 0, 0, :] = 10.0  # confident predictions on the padding do not count
    m = BoundaryOdsF(0.11)
    m.update(logits, target, [{"name": "a", "size": [12, 12]}])
    assert m.compute()["edge/odsF"] == pytest.approx(100.0)


def test_disk_max_radius():
    x = torch.zeros(7, 7)
    x[3, 3] = 1
    d = disk_max(x, 1.5)
    assert d.sum() == 9  # radius 1.5 covers the 3x3 neighbourhood
    assert disk_max(x, 1.0).sum() == 5


def _random_batch(seed, b=3, h=10, w=12):
    g = torch.Generator().manual_seed(seed)
    profile = PROFILES["synthetic"]
    outputs, batch = {}, {"meta": [{"name": str(i), "size": [h, w]} for i in range(b)]}
    for task in profile.tasks:
        outputs[task.name] = {"final": torch.randn(b, task.channels, h, w, generator=g)}
        if task.name in ("semseg", "human_parts", "sal"):
            batch[task.name] = torch.randint(0, task.channels, (b, h, w), generator=g)
        elif task.name == "edge":
            batch[task.name] = (torch.rand(b, 1, h, w, generator=g) > 0.8).float()
        else:
            batch[task.name] = torch.randn(b, task.channels, h, w, generator=g).abs()
    return outputs, batch


def _split(outputs, batch, sl):
    return ({t: {"final": o["final"][sl]} for t, o in outputs.items()},
            {k: (v[sl] if k != "meta" else v[sl]) for k, v in batch.items()})


def test_metric_sets_merge_like_one_pass_over_the_split():
    outputs, batch = _random_batch(0, b=4)
    whole = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    whole.update(outputs, batch)
    worker_a = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    worker_b = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    worker_a.update(*_split(outputs, batch, slice(0, 1)))
    worker_b.update(*_split(outputs, batch, slice(1, 4)))
    # all-reduce through the tensor state, as the trainer does
    summed = {k: v + worker_b.state_tensors()[k] for k, v in worker_a.state_tensors().items()}
    reduced = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    reduced.load_state_tensors(summed)
    worker_a.merge(worker_b)
    expected = whole.compute()
    assert set(expected) == {"semseg/mIoU", "human_parts/mIoU", "sal/maxF", "normals/mean", "normals/median",
                             "normals/within_11.25", "normals/within_22.5", "normals/within_30",
                             "depth/rmse", "edge/odsF"}
    for got in (worker_a.compute(), reduced.compute()):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert all(v.dtype == torch.float64 for v in whole.state_tensors().values())
    whole.reset()
    assert all(float(v.abs().sum()) == 0 for v in whole.state_tensors().values())


def test_metric_set_checks_outputs():
    outputs, batch = _random_batch(1)
    metrics = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    del outputs["depth"]
    with pytest.raises(KeyError, match="'depth'"):
        metrics.update(outputs, batch)
    outputs, batch = _random_batch(1)
    outputs["semseg"]["final"] = outputs["semseg"]["final"][..., :5]
    with pytest.raises(ValueError, match="input size"):
        metrics.update(outputs, batch)
    with pytest.raises(KeyError, match="missing"):
        metrics.load_state_tensors({})


def test_edge_tolerance_follows_the_dataset():
    nyud = MetricSet.for_profile(PROFILES["nyud"], "nyud").metrics["edge"]
    pascal = MetricSet.for_profile(PROFILES["pascal"], "pascal").metrics["edge"]
    assert (nyud.max_dist, pascal.max_dist) == (0.011, 0.0075)


def test_delta_m_sign_convention():
    baseline = {"semseg/mIoU": {"value": 40.0, "higher_is_better": True},
                "depth/rmse": {"value": 0.5, "higher_is_better": False}}
    # +10 % mIoU and a 10 % worse (higher) RMSE cancel
    assert delta_m({"semseg/mIoU": 44.0, "depth/rmse": 0.55}, baseline) == pytest.approx(0.0)
    # a lower RMSE is an improvement
    assert delta_m({"semseg/mIoU": 44.0, "depth/rmse": 0.45}, baseline) == pytest.approx(10.0)
    assert delta_m({"semseg/mIoU": 36.0, "depth/rmse": 0.55}, baseline) == pytest.approx(-10.0)
    with pytest.raises(KeyError, match="depth/rmse"):
        delta_m({"semseg/mIoU": 44.0}, baseline)


def test_baseline_direction_must_agree():
    with pytest.raises(BaselineError, match="depth/rmse .* lower-is-better"):
        delta_m({"depth/rmse": 0.5}, {"depth/rmse": {"value": 0.6, "higher_is_better": True}})


def test_delta_m_against_a_baseline_file(tmp_path):
    # The HRNet18 NYUD single-task row of the ATRC paper (Tables 1 and 2) and an invented multi-task result whose
    # relative changes are +2.31 % (mIoU), +1.54 % (RMSE lower), +2.20 % (normals lower), +0.16 %.
    path = tmp_path / "st.yaml"
    path.write_text(
        "selection_split: val\nsource: ATRC HRNet18 single-task, NYUD-v2\nmetrics:\n"
        "  semseg/mIoU: {value: 38.02, higher_is_better: true}\n"
        "  depth/rmse: {value: 0.6104, higher_is_better: false}\n"
        "  normals/mean: {value: 20.94, higher_is_better: false}\n"
        "  edge/odsF: {value: 76.22, higher_is_better: true}\n")
    baseline = load_baseline(path)
    assert baseline.selection_split == "val"
    mt = {"semseg/mIoU": 38.90, "depth/rmse": 0.6010, "normals/mean": 20.48, "edge/odsF": 76.34}
    assert delta_m(mt, baseline) == pytest.approx(1.55, abs=0.01)
    table = format_metrics_table(mt, baseline, split="val")
    assert "delta_m: +1.55 %" in table and "selected on split 'val'" in table


def test_baseline_file_errors(tmp_path):
    with pytest.raises(BaselineError, match="not found"):
        load_baseline(tmp_path / "missing.yaml")
    path = tmp_path / "b.yaml"
    path.write_text("metrics:\n  semseg/mIoU: {value: 38.0, higher_is_better: true}\n")
    with pytest.raises(BaselineError, match="selection_split"):
        load_baseline(path)
    path.write_text("selection_split: val\nmetrics:\n  semseg/mIoU: {value: 38.0}\n")
    with pytest.raises(BaselineError, match="higher_is_better"):
        load_baseline(path)



def test_baseline_file_errors_name_the_key_at_its_line_and_column(tmp_path):
    """The baseline file was read with yaml.safe_load and reported as `FILE: metrics.X.value:
    Input should be ...`: no line, no column, a repeated key silently kept."""
    from mtl_dsl.errors import SpecError

    path = tmp_path / "st.yaml"
    path.write_text("selection_split: val\nmetrics:\n"
                    "  semseg/mIoU: {value: abc, higher_is_better: true}\n")
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    assert (info.value.line, info.value.column) == (3, 17)
    assert info.value.message.startswith("key 'metrics.semseg/mIoU.value': Input should be a "
                                         "valid number")
    assert info.value.message.endswith("(got 'abc')")
    path.write_text("selection_split: val\nmetrics: {semseg/mIoU: {value: 1, higher_is_better: "
                    "true}}\nsource: a\nsourse: b\n")
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    assert (info.value.message, info.value.line, info.value.column) == (
        "unknown key 'sourse'", 4, 1)
    path.write_text("selection_split: val\nselection_split: test\nmetrics: {}\n")
    with pytest.raises(SpecError) as repeated:
        load_baseline(path)
    assert repeated.value.line == 2 and "given twice" in repeated.value.message

def test_table_without_baseline_says_delta_m_is_not_computed():
    table = format_metrics_table({"semseg/mIoU": 40.0, "depth/rmse": 0.5})
    assert "delta_m: not computed (no single-task baseline file given)" in table
    assert "lower" in table and "higher" in table


def test_every_metric_has_a_direction():
    outputs, batch = _random_batch(2)
    metrics = MetricSet.for_profile(PROFILES["synthetic"], "synthetic")
    metrics.update(outputs, batch)
    assert set(metrics.compute()) <= set(METRIC_DIRECTIONS)
