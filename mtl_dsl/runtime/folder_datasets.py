"""NYUD-v2 and PASCAL-Context on disk: file readers, the folder datasets and their checks.

Real datasets use the folder layouts of the standard multi-task code bases (ASTMT / MTI-Net /
ATRC), under ``root`` or ``root/NYUD_MT`` / ``root/PASCAL_MT``::

    NYUD_MT/gt_sets/{train,val}.txt        one image id per line
    NYUD_MT/images/ID.jpg                  RGB
    NYUD_MT/segmentation/ID.png            0 = unlabelled, 1..40 -> label - 1, 0 -> 255
    NYUD_MT/depth/ID.npy                   metres (H, W), 0 = missing
    NYUD_MT/normals/ID.npy                 (H, W, 3) in [-1, 1], 0 = missing
    NYUD_MT/edge/ID.npy                    (H, W) 0/1

    PASCAL_MT/ImageSets/Context/{train,val}.txt
    PASCAL_MT/JPEGImages/ID.jpg
    PASCAL_MT/semseg/VOC12/ID.png          21 classes incl. background (else semseg/pascal-context/ID.png)
    PASCAL_MT/human_parts/ID.mat           PASCAL-Part annotation (needs scipy); or ID.png / ID.npy
                                           holding the 0..6 part labels directly
    PASCAL_MT/sal_distill/ID.png           saliency in [0, 255], binarised at 0.5
    PASCAL_MT/normals_distill/ID.png       (n + 1) * 255 / 2, valid on the NYUD-like classes only
    PASCAL_MT/pascal-context/trainval/ID.mat  "LabelMap" of the 459 context classes (needs scipy);
                                           or ID.png (16-bit) / ID.npy with the same label map.
                                           Edges are its thinned Laplacian; it also masks normals.

Every listed file must exist (checked when the dataset opens) and be readable: a missing or
corrupt file is a ``DatasetError`` naming it. ``FolderDataset.check_files`` reads every file's
header before a run (cheap: nothing is decoded).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from ..tasks import IGNORE_INDEX, TaskProfile
from .sampling import sample_rng
from .transforms import TestTransform, TrainTransform

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

# PASCAL-Part names of the person category (15) -> the 6 coarse parts of the multi-task benchmark.
PASCAL_PERSON_CATEGORY = 15
PASCAL_HUMAN_PARTS = {
    "hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "mouth": 1, "nose": 1, "rear": 1,
    "rebrow": 1, "reye": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "lhand": 4, "llarm": 4,
    "rhand": 4, "rlarm": 4, "luleg": 5, "ruleg": 5, "lfoot": 6, "llleg": 6, "rfoot": 6, "rlleg": 6,
}


class DatasetError(Exception):
    """A dataset folder, split list or file that cannot be used; the message names it."""


def _require_scipy(path: Path):
    try:
        from scipy import io
    except ImportError:
        raise DatasetError(f"install scipy to read {path} (or convert it to .png/.npy next to it)") from None
    return io


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    from .images import rgb8

    try:
        with Image.open(path) as img:
            return rgb8(img).astype(np.float32)
    except Exception as e:  # PIL raises several types for truncated or foreign files
        raise DatasetError(f"cannot read image {path}: {e}") from None


def header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a readable image, array or MATLAB file, judged from its header
    alone (cheap: nothing is decoded), or None."""
    try:
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            from PIL import Image

            with Image.open(path) as img:
                if min(img.size) < 1:
                    return "empty image"
            return None
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    return None
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                needed = f.tell() + int(np.prod(shape)) * dtype.itemsize
            size = path.stat().st_size
            return None if size >= needed else f"truncated array ({size:,} of {needed:,} bytes)"
        if path.suffix == ".mat":
            with open(path, "rb") as f:
                return None if f.read(6) == b"MATLAB" else "not a MATLAB file"
        return None
    except Exception as e:  # PIL and numpy raise several types for foreign or truncated files
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                raise ValueError(f"expected a single-channel label PNG, got mode {img.mode}")
            return np.asarray(img).astype(np.float32)
    except Exception as e:
        raise DatasetError(f"cannot read label image {path}: {e}") from None


def read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except Exception as e:
        raise DatasetError(f"cannot read array {path}: {e}") from None


def read_label_map(path: Path) -> np.ndarray:
    """An integer label map stored as .npy, single-channel .png or a .mat with "LabelMap"."""
    if path.suffix == ".npy":
        return read_npy(path)
    if path.suffix == ".png":
        return read_label_png(path)
    io = _require_scipy(path)
    try:
        return np.asarray(io.loadmat(str(path))["LabelMap"], dtype=np.float32)
    except Exception as e:
        raise DatasetError(f"cannot read LabelMap from {path}: {e}") from None


def _channel(array: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise DatasetError(f"{path} has shape {tuple(array.shape)}, expected (H, W{', ' + str(channels) if channels > 1 else ''})")
    return array


# --- edges from a label map: cv2.Laplacian (ksize 1, reflect-101 border) != 0, then thinning ---

def label_boundaries(labels: np.ndarray) -> np.ndarray:
    padded = np.pad(labels.astype(np.float64), 1, mode="reflect")
    lap = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
           - 4.0 * padded[1:-1, 1:-1])
    return thin(np.abs(lap) > 0)


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    # Guo & Hall's two-subiteration thinning (as in Lam, Lee & Suen 1992, skimage.morphology.thin).
    # Bit k of a code is neighbour x_{k+1}: E, NE, N, NW, W, SW, S, SE.
    first, second = np.zeros(256, dtype=bool), np.zeros(256, dtype=bool)
    for code in range(256):
        x = [(code >> k) & 1 == 1 for k in range(8)]
        crossing = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[(i + 2) % 8]))
        n1 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[(k + 1) % 8])
        g12 = crossing == 1 and 2 <= min(n1, n2) <= 3
        first[code] = g12 and not ((x[1] or x[2] or not x[7]) and x[0])
        second[code] = g12 and not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


_THIN_TABLES: tuple[np.ndarray, np.ndarray] | None = None


# Neighbour x_{k+1} of the thinning tables as a (row, column) offset.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary mask to 1-pixel-wide curves (iterated until nothing changes)."""
    global _THIN_TABLES
    if _THIN_TABLES is None:
        _THIN_TABLES = _thinning_tables()
    skel = mask.astype(bool).copy()
    h, w = skel.shape
    changed = True
    while changed:
        changed = False
        for table in _THIN_TABLES:
            padded = np.pad(skel, 1).astype(np.int64)
            code = np.zeros(skel.shape, dtype=np.int64)
            for bit, (dy, dx) in enumerate(_NEIGHBOURS):
                code |= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << bit
            delete = table[code] & skel
            if delete.any():
                skel &= ~delete
                changed = True
    return skel


def _find_root(root: str | Path | None, folder: str, marker: str, title: str) -> Path:
    if root is None:
        raise DatasetError(f"the {title} dataset needs a root folder (the one holding {folder}/)")
    root = Path(root).expanduser()
    for candidate in (root / folder, root):
        if (candidate / marker).is_dir():
            return candidate
    if not root.exists():
        raise DatasetError(f"{title} dataset folder not found: {root}")
    raise DatasetError(f"{title} dataset folder {root} has no {folder}/{marker}/ (nor {marker}/)")


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.txt"))
        raise DatasetError(f"split file not found: {path}" + (f" (available: {', '.join(options)})" if options else ""))
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split file {path} lists no images")
    return names


class FolderDataset(Dataset, ABC):
    """A real dataset on disk: per-image file lists, loaders per task, the official pipelines."""

    title = ""
    folder = ""
    split_dir = ""
    supported: dict[str, int | None] = {}  # task -> required channels (None: any)

    def __init__(self, root, split: str, profile: TaskProfile, size: tuple[int, int],
                 augment: bool, seed: int):
        self.root = _find_root(root, self.folder, self.split_dir.split("/")[0], self.title)
        self._check_tasks(profile)
        self.profile, self.tasks = profile, profile.task_names
        self.split, self.seed, self.epoch = split, int(seed), 0
        self.size = (int(size[0]), int(size[1]))
        self.edge_pos_weight = profile.edge_pos_weight
        self.augment = augment
        self.transform = TrainTransform(self.size) if augment else TestTransform(self.size)
        split_file = self.root / self.split_dir / f"{split}.txt"
        self.names = _read_split(split_file)
        self.files = [self._files(name) for name in self.names]
        missing = [p for files in self.files for p in files.values() if not p.is_file()]
        if missing:
            more = f"; {len(missing) - 1} more files missing" if len(missing) > 1 else ""
            raise DatasetError(f"missing file {missing[0]} (listed in {split_file}){more}")

    def _check_tasks(self, profile: TaskProfile) -> None:
        for task in profile.tasks:
            if task.name not in self.supported:
                raise DatasetError(f"{self.title} has no ground truth for task '{task.name}' "
                                   f"(it has {', '.join(self.supported)})")
            need = self.supported[task.name]
            if need is not None and task.channels != need:
                raise DatasetError(f"{self.title} {task.name} has {need} classes, the task profile "
                                   f"asks for {task.channels}")

    def check_files(self) -> list[tuple[Path, str]]:
        """(file, problem) for every listed file whose header is not readable."""
        bad = []
        for files in self.files:
            for path in files.values():
                problem = header_problem(path)
                if problem is not None:
                    bad.append((path, problem))
        return bad

    @abstractmethod
    def _files(self, name: str) -> dict[str, Path]:
        """The files of sample ``name``, by kind."""

    @abstractmethod
    def load_raw(self, index: int) -> dict:
        """Sample ``index`` as decoded arrays, before any transform."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        raw = self.load_raw(index)
        h, w = raw["image"].shape[:2]
        for key, value in raw.items():
            if isinstance(value, np.ndarray) and value.shape[:2] != (h, w):
                raise DatasetError(f"{self.files[index].get(key, key)} is {value.shape[0]}x{value.shape[1]} "
                                   f"but its image {self.files[index]['image']} is {h}x{w}")
        rng = sample_rng(self.seed, self.epoch, index) if self.augment else None
        try:
            return self.transform(raw, self.tasks, rng)
        except ValueError as e:
            raise DatasetError(f"{self.files[index]['image']}: {e}") from None


class NYUDv2(FolderDataset):
    title = "NYUD-v2"
    folder = "NYUD_MT"
    split_dir = "gt_sets"
    supported = {"semseg": 40, "depth": None, "normals": None, "edge": None}

    def _files(self, name: str) -> dict[str, Path]:
        image = self.root / "images" / f"{name}.jpg"
        if not image.is_file() and (self.root / "images" / f"{name}.png").is_file():
            image = self.root / "images" / f"{name}.png"
        files = {"image": image}
        where = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"),
                 "normals": ("normals", ".npy"), "edge": ("edge", ".npy")}
        for task in self.tasks:
            folder, ext = where[task]
            files[task] = self.root / folder / f"{name}{ext}"
        return files

    def load_raw(self, index: int) -> dict:
        files = self.files[index]
        raw: dict = {"name": self.names[index], "image": read_rgb(files["image"])}
        if "semseg" in files:
            seg = read_label_png(files["semseg"])
            # Class 0 (unlabelled) is ignored; the 40 classes become 0..39.
            raw["semseg"] = np.where(seg == 0, IGNORE_INDEX, seg - 1)[..., None].astype(np.float32)
        if "depth" in files:
            raw["depth"] = _channel(read_npy(files["depth"]), 1, files["depth"])
        if "normals" in files:
            raw["normals"] = _channel(read_npy(files["normals"]), 3, files["normals"])
        if "edge" in files:
            raw["edge"] = _channel(read_npy(files["edge"]), 1, files["edge"])
        return raw


def _normals_valid_classes() -> np.ndarray:
    """PASCAL-Context classes that also exist in NYUD (plus tvmonitor): distilled normals are only
    trusted there, as in the ASTMT benchmark."""
    nyu = json.loads((RESOURCES / "nyu_classes.json").read_text())
    context = json.loads((RESOURCES / "context_classes.json").read_text())
    valid = [context[name] for name in nyu if name in context and name != "unknown"]
    valid.append(context["tvmonitor"])
    return np.array(sorted(set(valid)), dtype=np.float32)


class PascalContext(FolderDataset):
    title = "PASCAL-Context"
    folder = "PASCAL_MT"
    split_dir = "ImageSets/Context"
    supported = {"semseg": 21, "human_parts": 7, "sal": None, "normals": None, "edge": None}

    def _first_existing(self, *candidates: Path) -> Path:
        for path in candidates:
            if path.is_file():
                return path
        return candidates[0]

    def _files(self, name: str) -> dict[str, Path]:
        r = self.root
        files = {"image": r / "JPEGImages" / f"{name}.jpg"}
        if "semseg" in self.tasks:
            files["semseg"] = self._first_existing(r / "semseg" / "VOC12" / f"{name}.png",
                                                   r / "semseg" / "pascal-context" / f"{name}.png")
        if "human_parts" in self.tasks:
            files["human_parts"] = self._first_existing(*(r / "human_parts" / f"{name}{ext}"
                                                          for ext in (".mat", ".png", ".npy")))
        if "sal" in self.tasks:
            files["sal"] = r / "sal_distill" / f"{name}.png"
        if "normals" in self.tasks:
            files["normals"] = r / "normals_distill" / f"{name}.png"
        if "normals" in self.tasks or "edge" in self.tasks:
            files["labels"] = self._first_existing(*(r / "pascal-context" / "trainval" / f"{name}{ext}"
                                                     for ext in (".mat", ".png", ".npy")))
        return files

    def load_raw(self, index: int) -> dict:
        files = self.files[index]
        raw: dict = {"name": self.names[index], "image": read_rgb(files["image"])}
        h, w = raw["image"].shape[:2]
        labels = read_label_map(files["labels"]) if "labels" in files else None
        if labels is not None and labels.shape != (h, w):
            raise DatasetError(f"{files['labels']} is {labels.shape[0]}x{labels.shape[1]} "
                               f"but its image {files['image']} is {h}x{w}")
        if "semseg" in files:
            raw["semseg"] = _channel(read_label_png(files["semseg"]), 1, files["semseg"])
        if "human_parts" in files:
            raw["human_parts"] = _channel(self._read_parts(files["human_parts"], (h, w)), 1, files["human_parts"])
        if "sal" in files:
            sal = read_label_png(files["sal"]) / 255.0
            raw["sal"] = _channel((sal > 0.5).astype(np.float32), 1, files["sal"])
        if "normals" in self.tasks:
            normals = np.asarray(self._read_normals_png(files["normals"]), dtype=np.float32)
            valid = np.isin(labels, _normals_valid_classes())
            raw["normals"] = _channel(np.where(valid[..., None], normals, 0.0).astype(np.float32), 3, files["normals"])
        if "edge" in self.tasks:
            raw["edge"] = label_boundaries(labels)[..., None].astype(np.float32)
        return raw

    @staticmethod
    def _read_normals_png(path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        except Exception as e:
            raise DatasetError(f"cannot read normals image {path}: {e}") from None
        return 2.0 * rgb / 255.0 - 1.0

    @staticmethod
    def _read_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
        if path.suffix in (".png", ".npy"):
            return read_label_png(path) if path.suffix == ".png" else read_npy(path)
        io = _require_scipy(path)
        try:
            objects = io.loadmat(str(path))["anno"][0][0][1][0]
            target = np.zeros(shape, dtype=np.float32)
            for obj in objects:
                if int(obj[1][0][0]) != PASCAL_PERSON_CATEGORY or len(obj[3]) == 0:
                    continue
                for part in obj[3][0]:
                    target[part[1].astype(bool)] = PASCAL_HUMAN_PARTS[str(part[0][0])]
            return target
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"cannot read part annotation {path}: {e}") from None


_FOLDER_DATASETS: dict[str, Callable[..., FolderDataset]] = {"nyud": NYUDv2, "pascal": PascalContext}


FOLDER_DATASETS: dict[str, Callable[..., FolderDataset]] = {"nyud": NYUDv2, "pascal": PascalContext}
