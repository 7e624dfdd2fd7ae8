"""NYUD-v2 / PASCAL-Context loaders on tiny fixture folders, and the augmentation pipeline."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_dsl.runtime import transforms as T
from mtl_dsl.runtime.datasets import DatasetError, build_dataset, collate_samples
from mtl_dsl.runtime.folder_datasets import RESOURCES, label_boundaries, thin
from mtl_dsl.tasks import resolve_tasks

H, W = 20, 24


def _rgb(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def make_nyud(root, names=("0001", "0002", "0003")):
    base = root / "NYUD_MT"
    for d in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (base / d).mkdir(parents=True)
    for i, name in enumerate(names):
        _rgb(base / "images" / f"{name}.jpg", i)
        seg = np.zeros((H, W), dtype=np.uint8)
        seg[:, W // 2:] = 1 + i  # label 1 + i -> class i; label 0 -> ignore
        seg[: H // 2, : W // 2] = 40
        Image.fromarray(seg).save(base / "segmentation" / f"{name}.png")
        depth = np.full((H, W), 2.0 + i, dtype=np.float32)
        depth[0, 0] = 0.0  # a missing measurement
        np.save(base / "depth" / f"{name}.npy", depth)
        normals = np.zeros((H, W, 3), dtype=np.float32)
        normals[..., 0], normals[..., 2] = 0.6, -0.8
        normals[1, 1] = 0.0  # a missing normal
        np.save(base / "normals" / f"{name}.npy", normals)
        edge = np.zeros((H, W), dtype=np.float32)
        edge[:, W // 2] = 1
        np.save(base / "edge" / f"{name}.npy", edge)
    (base / "gt_sets" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (base / "gt_sets" / "val.txt").write_text(names[2] + "\n")
    return base


NORMAL_CLASS = json.loads((RESOURCES / "context_classes.json").read_text())["tvmonitor"]


def make_pascal(root, names=("2008_000001", "2008_000002")):
    base = root / "PASCAL_MT"
    for d in ("JPEGImages", "semseg/VOC12", "semseg/pascal-context", "human_parts", "sal_distill",
              "normals_distill", "pascal-context/trainval", "ImageSets/Context"):
        (base / d).mkdir(parents=True)
    for i, name in enumerate(names):
        _rgb(base / "JPEGImages" / f"{name}.jpg", 10 + i)
        seg = np.zeros((H, W), dtype=np.uint8)
        seg[5:15, 5:15] = 15
        folder = "VOC12" if i == 0 else "pascal-context"  # both semseg locations are used
        Image.fromarray(seg).save(base / "semseg" / folder / f"{name}.png")
        parts = np.zeros((H, W), dtype=np.uint8)
        if i == 0:
            parts[5:10, 5:15], parts[10:15, 5:15] = 1, 2
        Image.fromarray(parts).save(base / "human_parts" / f"{name}.png")
        sal = np.zeros((H, W), dtype=np.uint8)
        sal[5:15, 5:15] = 200
        sal[0, :] = 100  # below 0.5 -> not salient
        Image.fromarray(sal).save(base / "sal_distill" / f"{name}.png")
        normals = np.zeros((H, W, 3), dtype=np.uint8)
        normals[...] = (128, 128, 255)
        Image.fromarray(normals).save(base / "normals_distill" / f"{name}.png")
        labels = np.full((H, W), 1, dtype=np.uint16)  # class 1 (accordion): no trusted normals
        labels[:, W // 2:] = NORMAL_CLASS
        if i == 0:
            Image.fromarray(labels).save(base / "pascal-context" / "trainval" / f"{name}.png")
        else:
            np.save(base / "pascal-context" / "trainval" / f"{name}.npy", labels)
    (base / "ImageSets" / "Context" / "train.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets" / "Context" / "val.txt").write_text(names[0] + "\n")
    return base


def test_nyud_test_pipeline_shapes_and_ignore_values(tmp_path):
    make_nyud(tmp_path)
    ds = build_dataset("nyud", tmp_path, "train", "nyud", input_size=(24, 28), augment=False)
    assert len(ds) == 2 and ds.edge_pos_weight == 0.8
    item = ds[1]
    assert item["image"].shape == (3, 24, 28) and item["image"].dtype == torch.float32
    assert item["meta"] == {"name": "0002", "size": [H, W]}
    seg = item["semseg"]
    assert seg.dtype == torch.int64 and seg.shape == (24, 28)
    top, left = 2, 2  # centred padding of 20x24 into 24x28
    inner = seg[top:top + H, left:left + W]
    assert int(inner[0, W - 1]) == 1  # label 2 -> class 1
    assert int(inner[0, 0]) == 39  # label 40 -> class 39
    assert int(inner[H - 1, 0]) == 255  # label 0 -> ignore
    assert (seg[:top] == 255).all() and (seg[:, :left] == 255).all()
    depth, normals, edge = item["depth"], item["normals"], item["edge"]
    assert depth.shape == (1, 24, 28) and float(depth[0, top + 5, left + 5]) == 3.0
    assert float(depth[0, top, left]) == 255  # missing -> ignore
    assert (depth[0, 0] == 255).all()  # padding -> ignore
    assert (normals[:, top + 1, left + 1] == 255).all() and (normals[:, 0, 0] == 255).all()
    torch.testing.assert_close(normals[:, top + 5, left + 5], torch.tensor([0.6, 0.0, -0.8]))
    assert (edge[0, 0] == 255).all() and float(edge[0, top, left + W // 2]) == 1.0
    assert (item["image"][:, 0, 0] == 0).all()  # image padding is 0 after normalisation


def test_nyud_train_pipeline(tmp_path):
    make_nyud(tmp_path)
    ds = build_dataset("nyud", tmp_path / "NYUD_MT", "train", "nyud", input_size=(16, 16), augment=True, seed=3)
    batch = collate_samples([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["semseg"].shape == (2, 16, 16)
    assert batch["depth"].shape == (2, 1, 16, 16) and batch["normals"].shape == (2, 3, 16, 16)
    depth = batch["depth"][batch["depth"] != 255]
    # depth divided by the random scale in [0.5, 2]: from 2 or 3 metres to within [1, 6]
    assert depth.numel() and depth.min() >= 1.0 - 1e-5 and depth.max() <= 6.0 + 1e-5
    valid = (batch["normals"] != 255).all(dim=1)
    torch.testing.assert_close(batch["normals"].abs().permute(0, 2, 3, 1)[valid][:, 0],
                               torch.full((int(valid.sum()),), 0.6))
    again = ds[0]
    torch.testing.assert_close(again["image"], batch["image"][0])  # same seed, epoch, index


def test_pascal_loader(tmp_path):
    make_pascal(tmp_path)
    ds = build_dataset("pascal", tmp_path, "train", "pascal", input_size=(24, 24), augment=False)
    assert len(ds) == 2 and ds.edge_pos_weight == 0.95
    a, b = ds[0], ds[1]
    top, left = 2, 0
    assert set(a) == {"image", "semseg", "human_parts", "sal", "normals", "edge", "meta"}
    assert int(a["semseg"][top + 6, left + 6]) == 15 and int(a["semseg"][top, left]) == 0
    assert (a["semseg"][:top] == 255).all()
    assert int(a["human_parts"][top + 6, left + 6]) == 1 and int(a["human_parts"][top + 12, left + 6]) == 2
    assert int(a["human_parts"][top, left]) == 0
    assert (b["human_parts"] == 255).all()  # no part annotation -> all ignored
    assert int(a["sal"][top + 6, left + 6]) == 1 and int(a["sal"][top, left]) == 0
    n = a["normals"]
    assert (n[:, top + 3, left + 3] == 255).all()  # class without trusted normals
    torch.testing.assert_close(n[:, top + 3, left + W - 2], torch.tensor([2 * 128 / 255 - 1, 2 * 128 / 255 - 1, 1.0]))
    e = a["edge"][0, top:top + H, left:left + W]
    # one thin line at the label change (thinning may shorten it by a pixel at the image border)
    assert e.sum() >= H - 1 and (e.sum(dim=1) <= 1).all() and e[:, W // 2 - 1:W // 2 + 1].sum() == e.sum()
    for item in (a, b):
        assert item["sal"].dtype == torch.int64 and item["edge"].dtype == torch.float32


def test_pascal_train_pipeline(tmp_path):
    make_pascal(tmp_path)
    ds = build_dataset("pascal", tmp_path, "train", "pascal", input_size=(16, 16), augment=True)
    batch = collate_samples([ds[0], ds[1]])
    for key, shape in (("image", (2, 3, 16, 16)), ("semseg", (2, 16, 16)), ("human_parts", (2, 16, 16)),
                       ("sal", (2, 16, 16)), ("normals", (2, 3, 16, 16)), ("edge", (2, 1, 16, 16))):
        assert batch[key].shape == shape
    assert set(batch["sal"].unique().tolist()) <= {0, 1, 255}
    assert set(batch["edge"].unique().tolist()) <= {0.0, 1.0, 255.0}


def test_missing_file_is_named(tmp_path):
    base = make_nyud(tmp_path)
    (base / "depth" / "0002.npy").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*depth/0002\.npy"):
        build_dataset("nyud", tmp_path, "train", "nyud")


def test_missing_files_of_unused_tasks_do_not_matter(tmp_path):
    base = make_nyud(tmp_path)
    (base / "depth" / "0002.npy").unlink()
    ds = build_dataset("nyud", tmp_path, "train", "semseg:40,normals", input_size=(20, 24))
    assert set(ds[1]) == {"image", "semseg", "normals", "meta"}


def test_corrupt_png_is_named(tmp_path):
    base = make_nyud(tmp_path)
    (base / "segmentation" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = build_dataset("nyud", tmp_path, "train", "nyud")
    with pytest.raises(DatasetError, match=r"segmentation/0001\.png"):
        ds[0]
    ds[1]  # the other image is fine


def test_label_of_wrong_size_is_named(tmp_path):
    base = make_nyud(tmp_path)
    np.save(base / "depth" / "0001.npy", np.ones((H + 1, W), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"depth/0001\.npy is 21x24"):
        build_dataset("nyud", tmp_path, "train", "nyud")[0]


def test_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetError, match="folder not found: .*nowhere") as info:
        build_dataset("nyud", tmp_path / "nowhere", "train", "nyud")
    assert "\n" not in str(info.value)
    make_nyud(tmp_path)
    with pytest.raises(DatasetError, match=r"split file not found: .*test\.txt \(available: train, val\)"):
        build_dataset("nyud", tmp_path, "test", "nyud")


def test_tasks_the_dataset_lacks(tmp_path):
    make_nyud(tmp_path)
    with pytest.raises(DatasetError, match="no ground truth for task 'sal'"):
        build_dataset("nyud", tmp_path, "train", "semseg:40,sal")
    with pytest.raises(DatasetError, match="semseg has 40 classes"):
        build_dataset("nyud", tmp_path, "train", "semseg:13")


def test_mat_files_need_scipy(tmp_path):
    try:
        import scipy  # noqa: F401
        pytest.skip("scipy is installed: .mat files are read")
    except ImportError:
        pass
    base = make_pascal(tmp_path)
    (base / "human_parts" / "2008_000001.png").unlink()
    (base / "human_parts" / "2008_000001.mat").write_bytes(b"MATLAB 5.0")
    ds = build_dataset("pascal", tmp_path, "train", "pascal", input_size=(24, 24))
    with pytest.raises(DatasetError, match=r"install scipy to read .*2008_000001\.mat"):
        ds[0]


# --- the pipeline on tiny arrays ---

def _sample(h=4, w=6):
    rng = np.random.default_rng(0)
    normals = np.zeros((h, w, 3), np.float32)
    normals[..., 0], normals[..., 2] = 0.6, -0.8
    return {"name": "x", "image": rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
            "semseg": np.arange(h * w, dtype=np.float32).reshape(h, w, 1) % 3,
            "depth": np.full((h, w, 1), 4.0, np.float32), "normals": normals,
            "edge": np.zeros((h, w, 1), np.float32)}


def test_flip_negates_normals_x_and_mirrors_labels():
    s = _sample()
    f = T.hflip(s)
    np.testing.assert_array_equal(f["normals"][..., 0], -s["normals"][..., 0])
    np.testing.assert_array_equal(f["normals"][..., 2], s["normals"][..., 2])
    np.testing.assert_array_equal(f["semseg"], s["semseg"][:, ::-1])
    assert s["normals"][0, 0, 0] == 0.6  # the input is untouched


def test_scale_divides_depth_and_keeps_labels_nearest():
    s = _sample()
    up = T.scale_sample(s, 2.0)
    assert up["image"].shape == (8, 12, 3) and up["depth"].shape == (8, 12, 1)
    np.testing.assert_allclose(up["depth"], 2.0)
    assert set(np.unique(up["semseg"])) <= {0.0, 1.0, 2.0}
    down = T.scale_sample(s, 0.5)
    assert down["semseg"].shape == (2, 3, 1)
    np.testing.assert_allclose(down["depth"], 8.0)


def test_padding_values_and_ignore_regions():
    s = _sample(2, 2)
    s["image"] = T.normalize(s["image"])
    p = T.add_ignore_regions(T.pad_to(s, (4, 5)))
    assert p["image"].shape == (4, 5, 3)
    assert (p["image"][0] == 0).all() and (p["semseg"][0] == 255).all() and (p["edge"][:, 0] == 255).all()
    assert (p["depth"][0] == 255).all() and (p["normals"][0] == 255).all()
    np.testing.assert_array_equal(p["depth"][1:3, 1:3], 4.0)  # placed at (1, 1): centred, odd pad right
    parts = {"image": np.zeros((2, 2, 3), np.float32), "human_parts": np.zeros((2, 2, 1), np.float32)}
    assert (T.add_ignore_regions(parts)["human_parts"] == 255).all()


def test_crop_rule_rejects_single_class_crops():
    assert not T.crop_passes_category_rule(np.zeros((4, 4)), 0.75)
    mostly = np.zeros((4, 4))
    mostly[0, :3] = 1  # 13 of 16 pixels one class: 0.81 >= 0.75
    assert not T.crop_passes_category_rule(mostly, 0.75)
    half = np.zeros((4, 4))
    half[:2] = 1
    assert T.crop_passes_category_rule(half, 0.75)
    ignored = np.full((4, 4), 255.0)
    ignored[0, 0], ignored[0, 1] = 1, 2  # ignore pixels do not count
    assert T.crop_passes_category_rule(ignored, 0.75)


def test_random_crop_prefers_mixed_crops():
    seg = np.zeros((8, 40, 1), np.float32)
    seg[:, 36:] = 1  # only the right end has two classes
    s = {"image": np.zeros((8, 40, 3), np.float32), "semseg": seg}
    mixed = 0
    for seed in range(20):
        c = T.random_crop(s, np.random.default_rng(seed), (8, 8))
        assert c["semseg"].shape == (8, 8, 1)
        mixed += T.crop_passes_category_rule(c["semseg"], 0.75)
    assert mixed >= 12  # a uniform crop would pass about 1 time in 8


def test_photometric_distortion_keeps_range_and_is_seeded():
    img = np.random.default_rng(1).uniform(0, 255, (6, 7, 3)).astype(np.float32)
    a = T.photometric_distortion(img, np.random.default_rng(5))
    b = T.photometric_distortion(img, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 255


def test_hsv_round_trip():
    rgb = np.random.default_rng(2).integers(0, 256, (50, 3)).astype(np.uint8)
    back = T.hsv_to_rgb_u8(T.rgb_to_hsv_u8(rgb))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 4  # 8-bit hue has 2-degree steps


def test_thin_and_label_boundaries():
    block = np.zeros((7, 9), bool)
    block[2:5, 1:8] = True
    skeleton = thin(block)
    assert skeleton.sum() > 0 and skeleton[3].sum() == skeleton.sum()  # one row left
    labels = np.zeros((6, 6))
    labels[:, 3:] = 7
    edge = label_boundaries(labels)
    assert edge.sum() >= 5 and (edge.sum(axis=1) <= 1).all() and edge[:, 2:4].sum() == edge.sum()


def test_custom_profile_class_count_reaches_the_synthetic_data():
    ds = build_dataset("synthetic", None, "train", resolve_tasks("semseg:4,edge"), input_size=(16, 16), length=2)
    assert set(ds[0]) == {"image", "semseg", "edge", "meta"}


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'coco'"):
        build_dataset("coco", None, "train", "synthetic")
