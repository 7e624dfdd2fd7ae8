"""The train and test pipelines of the official multi-task recipes (github.com/brdav/atrc,
src/data/transforms.py and src/data/pl_data.py; DeMT and TPANet reuse them, InvPT's
InvPT/data/transforms.py matches).

A *raw sample* is a dict of numpy arrays in HWC layout, as a loader reads them from disk or the
synthetic renderer draws them: ``image`` float32 RGB in [0, 255] (H, W, 3); ``semseg``,
``human_parts``, ``sal``, ``edge``, ``depth`` float32 (H, W, 1); ``normals`` float32 (H, W, 3);
plus ``name`` (str). Labels stay float32 through the geometric steps, exactly as the reference
code keeps them, and become integer tensors only at the end (:func:`to_tensors`).

Train: random scale U(0.5, 2) (image bilinear, every label nearest, depth divided by the scale),
random crop to the train size with the ``cat_max_ratio`` 0.75 rule (10 retries), horizontal flip
with p = 0.5 (normals' x negated), mmseg's PhotoMetricDistortion, ImageNet normalisation,
centred padding to the train size (image 0 after normalisation, labels 255, depth and normals 0),
then ignore regions (depth 0 -> 255, zero-norm normals -> 255, images without any part label ->
all-255 parts). Test: normalisation, padding and ignore regions only.

Every random draw comes from the ``numpy.random.Generator`` passed in (``sampling.sample_rng``),
so a sample is a pure function of (raw sample, generator state).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..tasks import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD = np.array(IMAGENET_STD, dtype=np.float32)
# Centre padding fill per key; normals are padded with 0 and become 255 in add_ignore_regions.
PAD_VALUES = {"image": 0.0, "semseg": IGNORE_INDEX, "human_parts": IGNORE_INDEX, "sal": IGNORE_INDEX, "edge": IGNORE_INDEX,
              "depth": 0.0, "normals": 0.0}
CLASS_KEYS = ("semseg", "human_parts", "sal")
ARRAY_KEYS = ("image", "semseg", "human_parts", "sal", "depth", "normals", "edge")


def _arrays(sample: dict) -> Iterable[str]:
    return [k for k in ARRAY_KEYS if k in sample]


def _resize(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize an HWC float array; matches cv2's INTER_LINEAR / INTER_NEAREST sampling grids."""
    t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    if mode == "bilinear":
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    else:
        t = F.interpolate(t, size=size, mode="nearest")
    return t[0].permute(1, 2, 0).contiguous().numpy()


def random_scale(sample: dict, rng: np.random.Generator,
                 scale_range: tuple[float, float] = (0.5, 2.0)) -> dict:
    """Rescale every array by one factor s ~ U(range); depth is divided by s (a closer camera)."""
    scale = float(rng.uniform(*scale_range))
    return scale_sample(sample, scale)


def scale_sample(sample: dict, scale: float) -> dict:
    if scale == 1.0:
        return sample
    h, w = sample["image"].shape[:2]
    size = (max(1, int(h * scale)), max(1, int(w * scale)))
    out = dict(sample)
    for key in _arrays(sample):
        out[key] = _resize(sample[key], size, "bilinear" if key == "image" else "nearest")
    if "depth" in out:
        # Zero depth marks missing measurements and stays zero.
        out["depth"] = out["depth"] / scale
    return out


def _crop_box(shape: tuple[int, ...], size: tuple[int, int], rng: np.random.Generator):
    h, w = shape[:2]
    ch, cw = size
    top = int(rng.integers(0, max(h - ch, 0) + 1))
    left = int(rng.integers(0, max(w - cw, 0) + 1))
    return top, top + ch, left, left + cw


def crop_passes_category_rule(semseg: np.ndarray, cat_max_ratio: float) -> bool:
    """mmseg's rule: at least two labelled classes and none covering >= cat_max_ratio of them."""
    labels, counts = np.unique(semseg, return_counts=True)
    counts = counts[labels != IGNORE_INDEX]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(sample: dict, rng: np.random.Generator, size: tuple[int, int],
                cat_max_ratio: float = 0.75, retries: int = 10) -> dict:
    """Crop to ``size`` (smaller sides are kept whole and padded later).

    With semseg present and ``cat_max_ratio < 1``, a crop dominated by one class is redrawn up to
    ``retries`` times; the draw after the last failed check is used unchecked, as in mmseg/ATRC.
    """
    h, w = sample["image"].shape[:2]
    if (h, w) == tuple(size):
        return sample
    box = _crop_box((h, w), size, rng)
    if cat_max_ratio < 1.0 and "semseg" in sample:
        for _ in range(retries):
            t, b, l, r = box
            if crop_passes_category_rule(sample["semseg"][t:b, l:r], cat_max_ratio):
                break
            box = _crop_box((h, w), size, rng)
    t, b, l, r = box
    out = dict(sample)
    for key in _arrays(sample):
        out[key] = np.ascontiguousarray(sample[key][t:b, l:r])
    return out


def random_hflip(sample: dict, rng: np.random.Generator, p: float = 0.5) -> dict:
    if rng.random() >= p:
        return sample
    return hflip(sample)


def hflip(sample: dict) -> dict:
    out = dict(sample)
    for key in _arrays(sample):
        out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    if "normals" in out:
        # A mirrored surface faces the mirrored way; missing normals (0) stay 0.
        out["normals"][..., 0] *= -1
    return out


# --- mmseg PhotoMetricDistortion on uint8 RGB, with OpenCV's 8-bit HSV (H in [0, 180)) ---

def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def rgb_to_hsv_u8(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    s = np.where(v > 0, 255.0 * diff / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(diff, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe,
                 np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
    h = np.where(diff == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h)
    hsv = np.stack([np.round(h / 2.0) % 180, np.round(s), v], axis=-1)
    return hsv.astype(np.uint8)


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(hsv.shape, dtype=np.float32)
    for k, (rr, gg, bb) in enumerate(choices):
        m = sector == k
        rgb[m] = np.stack([rr[m], gg[m], bb[m]], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: each step with p = 0.5, contrast first or last at random."""
    img = image.astype(np.uint8)  # truncation, as the reference casts the float image
    if rng.random() < 0.5:
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.random() < 0.5:
        hsv = rgb_to_hsv_u8(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = hsv_to_rgb_u8(hsv)
    if rng.random() < 0.5:
        hsv = rgb_to_hsv_u8(img)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + shift) % 180).astype(np.uint8)
        img = hsv_to_rgb_u8(hsv)
    if not contrast_first and rng.random() < 0.5:
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img.astype(np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) / 255.0 - _MEAN) / _STD).astype(np.float32)


def pad_to(sample: dict, size: tuple[int, int]) -> dict:
    """Centre-pad every array to at least ``size`` with its PAD_VALUES fill."""
    h, w = sample["image"].shape[:2]
    th, tw = max(size[0], h), max(size[1], w)
    if (th, tw) == (h, w):
        return sample
    top, left = (th - h) // 2, (tw - w) // 2
    out = dict(sample)
    for key in _arrays(sample):
        arr = sample[key]
        padded = np.full((th, tw, arr.shape[2]), PAD_VALUES[key], dtype=np.float32)
        padded[top:top + h, left:left + w] = arr
        out[key] = padded
    return out


def add_ignore_regions(sample: dict) -> dict:
    out = dict(sample)
    if "depth" in out:
        depth = out["depth"].copy()
        depth[depth == 0] = IGNORE_INDEX
        out["depth"] = depth
    if "normals" in out:
        normals = out["normals"].copy()
        normals[np.linalg.norm(normals, axis=-1) == 0] = IGNORE_INDEX
        out["normals"] = normals
    if "human_parts" in out:
        parts = out["human_parts"]
        if np.all((parts == 0) | (parts == IGNORE_INDEX)):
            # No part annotated in this image: background would be a false label.
            out["human_parts"] = np.full_like(parts, IGNORE_INDEX)
    return out


def to_tensors(sample: dict, tasks: Iterable[str], content_size: tuple[int, int]) -> dict:
    """The sample format the trainer and metrics consume (see runtime/datasets.py)."""
    out: dict = {"image": torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1)))}
    for task in tasks:
        arr = sample[task]
        if task in CLASS_KEYS:
            out[task] = torch.from_numpy(np.ascontiguousarray(arr[..., 0])).long()
        else:
            out[task] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    out["meta"] = {"name": str(sample.get("name", "")), "size": [int(content_size[0]), int(content_size[1])]}
    return out


class TrainTransform:
    """The official train pipeline to a fixed ``size`` (H, W)."""

    def __init__(self, size: tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, flip_p: float = 0.5, photometric: bool = True):
        self.size = (int(size[0]), int(size[1]))
        self.scale_range = scale_range
        self.cat_max_ratio = cat_max_ratio
        self.flip_p = flip_p
        self.photometric = photometric

    def __call__(self, sample: dict, tasks: Iterable[str], rng: np.random.Generator) -> dict:
        sample = random_scale(sample, rng, self.scale_range)
        sample = random_crop(sample, rng, self.size, self.cat_max_ratio)
        sample = random_hflip(sample, rng, self.flip_p)
        if self.photometric:
            sample = dict(sample, image=photometric_distortion(sample["image"], rng))
        sample = dict(sample, image=normalize(sample["image"]))
        content = sample["image"].shape[:2]
        sample = add_ignore_regions(pad_to(sample, self.size))
        return to_tensors(sample, tasks, content)


class TestTransform:
    """Normalise and centre-pad to ``size``; no randomness."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict, tasks: Iterable[str], rng: np.random.Generator | None = None) -> dict:
        h, w = sample["image"].shape[:2]
        if h > self.size[0] or w > self.size[1]:
            raise ValueError(f"image '{sample.get('name', '')}' is {h}x{w}, larger than the evaluation "
                             f"input size {self.size[0]}x{self.size[1]} (the test pipeline only pads)")
        sample = dict(sample, image=normalize(sample["image"]))
        content = sample["image"].shape[:2]
        sample = add_ignore_regions(pad_to(sample, self.size))
        return to_tensors(sample, tasks, content)
