"""The embedded synthetic dataset: determinism, exact and mutually consistent ground truth."""
import numpy as np
import pytest
import torch

from mtl_dsl.runtime.datasets import build_dataset, collate_samples
from mtl_dsl.runtime.synthetic import SyntheticDataset, boundaries, render_sample
from mtl_dsl.tasks import PROFILES, resolve_tasks

SIZE = (48, 64)
KEYS = ("image", "semseg", "human_parts", "sal", "depth", "normals", "edge")


def test_same_seed_and_index_give_identical_samples():
    a = render_sample(3, "train", 5, SIZE)
    b = render_sample(3, "train", 5, SIZE)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["name"] == b["name"]


@pytest.mark.parametrize("other", [(3, "train", 6), (4, "train", 5), (3, "val", 5)])
def test_other_index_seed_or_split_gives_another_scene(other):
    a = render_sample(3, "train", 5, SIZE)
    b = render_sample(*other, SIZE)
    assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["depth"], b["depth"])


def test_dataset_items_follow_the_sample_format():
    ds = SyntheticDataset("train", size=(24, 32), length=3, seed=1)
    assert len(ds) == 3 and ds.edge_pos_weight == PROFILES["synthetic"].edge_pos_weight
    item = ds[2]
    assert set(item) == set(KEYS) | {"meta"}
    assert item["image"].shape == (3, 24, 32) and item["image"].dtype == torch.float32
    for key in ("semseg", "human_parts", "sal"):
        assert item[key].shape == (24, 32) and item[key].dtype == torch.int64
    assert item["depth"].shape == (1, 24, 32) and item["normals"].shape == (3, 24, 32)
    assert item["edge"].shape == (1, 24, 32) and item["edge"].dtype == torch.float32
    assert item["meta"] == {"name": "synthetic-train-1-000002", "size": [24, 32]}
    assert int(item["semseg"].max()) < 7 and int(item["human_parts"].max()) < 4
    # ImageNet normalisation: values around 0, not in [0, 255]
    assert item["image"].abs().max() < 5


def test_only_the_profile_tasks_are_returned():
    ds = build_dataset("synthetic", None, "val", "semseg:3,depth", length=2, input_size=(16, 20))
    item = ds[0]
    assert set(item) == {"image", "semseg", "depth", "meta"}
    assert int(item["semseg"].max()) <= 2  # 2 object classes + background


def test_the_scenes_serve_the_pascal_profile_with_seven_part_labels():
    ds = SyntheticDataset("train", size=(48, 64), length=6, tasks=resolve_tasks("pascal"))
    parts = torch.stack([ds[i]["human_parts"] for i in range(len(ds))])
    seg = torch.stack([ds[i]["semseg"] for i in range(len(ds))])
    assert set(parts.unique().tolist()) == set(range(7))  # background, top and five bands
    assert int(seg.max()) <= 20 and ((parts > 0) == (seg > 0)).all()


def test_part_bands_run_from_the_top_of_each_object_down():
    s = render_sample(0, "train", 1, SIZE, num_parts=7)
    parts, depth = s["human_parts"][..., 0], s["depth"][..., 0]
    seg = s["semseg"][..., 0]
    # image rows grow downwards: on every column of an object the band label never decreases
    # from one pixel to the one below it while both are bands of the same object
    same = (seg[1:] == seg[:-1]) & (parts[1:] >= 2) & (parts[:-1] >= 2) & \
        (np.abs(depth[1:] - depth[:-1]) < 0.05)
    assert same.sum() > 100 and (parts[1:][same] >= parts[:-1][same]).all()
    # four labels are the two halves of before: band thresholds at the object's centre
    four = render_sample(0, "train", 1, SIZE)["human_parts"][..., 0]
    assert set(np.unique(four).tolist()) <= {0, 1, 2, 3}
    assert ((four >= 2) == (parts >= 2)).all()


@pytest.mark.parametrize("count", [2, 17])
def test_part_counts_the_scenes_cannot_draw_are_refused_in_one_line(count):
    with pytest.raises(ValueError) as info:
        SyntheticDataset("train", length=1, tasks=resolve_tasks(f"human_parts:{count}"))
    assert str(info.value) == (f"the synthetic scenes have 3 to 16 part labels; the task profile "
                               f"asks for {count} (use e.g. --tasks human_parts:7)")


@pytest.mark.parametrize("index", range(6))
def test_ground_truth_is_consistent(index):
    s = render_sample(0, "train", index, SIZE)
    seg, parts, sal = s["semseg"][..., 0], s["human_parts"][..., 0], s["sal"][..., 0]
    depth, normals, edge = s["depth"][..., 0], s["normals"], s["edge"][..., 0]
    assert (depth > 0).all()  # every ray hits the ground, the wall or an object
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-4)
    # The labels agree: parts exactly on objects, saliency a subset of the objects.
    assert ((parts > 0) == (seg > 0)).all()
    assert (seg[sal == 1] > 0).all()
    if (seg > 0).sum() > 50:
        assert sal.sum() > 0
    # Every change of semantic label between 4-neighbours lies on a boundary pixel.
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        change = seg[a] != seg[b]
        assert (edge[a][change] + edge[b][change] >= 1).all()
    # The image is not blank and objects differ in colour from their surroundings.
    assert s["image"].std() > 10


def test_normals_face_the_camera():
    s = render_sample(0, "val", 0, SIZE)
    h, w = SIZE
    # Camera-frame rays (x right, y down, z forward) up to the focal length's scale.
    v, u = np.mgrid[0:h, 0:w]
    rays = np.stack([u + 0.5 - w / 2, v + 0.5 - h / 2, np.full((h, w), 100.0)], -1)
    assert (np.einsum("hwc,hwc->hw", s["normals"], rays) < 0).all()


def test_ground_plane_normals_point_up_in_the_image():
    s = render_sample(2, "train", 1, SIZE)
    bottom_row_background = s["semseg"][-1, :, 0] == 0
    # y points down in the camera frame, so the ground's normal has a negative y component.
    assert (s["normals"][-1][bottom_row_background][:, 1] < -0.5).all()


def test_boundaries_on_a_two_region_map():
    ids = np.zeros((4, 6), dtype=int)
    ids[:, 3:] = 1
    depth = np.where(ids == 1, 1.0, 2.0)  # region 1 is nearer: its side carries the boundary
    normals = np.zeros((4, 6, 3))
    normals[..., 2] = -1
    edge = boundaries(ids, ids * 0, depth, normals)
    expected = np.zeros((4, 6), dtype=bool)
    expected[:, 3] = True
    np.testing.assert_array_equal(edge, expected)


def test_augmented_samples_depend_on_epoch_and_are_reproducible():
    ds = SyntheticDataset("train", size=(24, 32), length=2, augment=True, cache=True)
    first = ds[1]
    again = ds[1]
    torch.testing.assert_close(first["image"], again["image"])
    ds.set_epoch(1)
    other = ds[1]
    assert not torch.equal(first["image"], other["image"])
    assert first["image"].shape == other["image"].shape == (3, 24, 32)


def test_collate_keeps_meta_as_a_list():
    ds = SyntheticDataset("val", size=(16, 20), length=3)
    batch = collate_samples([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 16, 20) and batch["semseg"].shape == (3, 16, 20)
    assert isinstance(batch["meta"], list) and batch["meta"][1]["size"] == [16, 20]


def test_out_of_range_index_and_unknown_split():
    with pytest.raises(IndexError):
        SyntheticDataset("val", size=(16, 20), length=2)[2]
    with pytest.raises(ValueError, match="unknown split"):
        SyntheticDataset("training", length=2)
