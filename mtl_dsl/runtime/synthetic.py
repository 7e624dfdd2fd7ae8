"""The embedded synthetic dataset: ray-cast 3-D scenes with exact ground truth for every task.

A scene is a ground plane and a back wall under a pin-hole camera (random height, pitch, yaw and
field of view), with 3-7 objects of the profile's classes resting on the ground at random
positions and rotations, a directional light with cast shadows and class-specific colours and
textures. Every pixel is ray-cast in numpy (vectorised over pixels and objects), so the labels are
exact and mutually consistent:

* semseg: 0 = ground and wall, k = object class (1..classes-1; six shapes cycle through the classes);
* depth: z-depth in metres along the optical axis;
* normals: unit surface normals in the camera frame (x right, y down, z forward), facing the camera;
* human_parts (the "part" task) with P labels (3 to 16; 4 by default, 7 for the PASCAL profile):
  0 background, 1 top (world normal within ~45 deg of up), then P - 2 horizontal bands of equal
  height from the top of the object down (4 labels: 2 upper half, 3 lower half); every other
  band is painted darker, so each is visible;
* sal: the objects nearest the camera (mean depth within 20 % of the nearest visible object);
* edge: 1-pixel boundaries wherever the surface, the part label or the normal (> 30 deg) changes,
  drawn on the nearer side of the boundary.

Sample ``i`` of ``(seed, split)`` is a pure function of those three numbers (NumPy SeedSequence), so
the train and val splits never share a scene and any length or image size can be asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from ..tasks import PROFILES, TaskProfile, resolve_tasks
from .sampling import sample_rng, seed_sequence

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
PART_NAMES = ("background", "top", "upper", "lower")  # the default 4 part labels
MIN_PARTS, MAX_PARTS = 3, 16
SHAPES = ("crate", "pillar", "slab", "ball", "globe", "beam")
SHAPE_IS_SPHERE = {"ball": True, "globe": True}
CLASS_HUES = (0.0, 120.0, 220.0, 55.0, 300.0, 180.0)
SALIENT_DEPTH_RATIO = 1.2
CREASE_COS = float(np.cos(np.deg2rad(30.0)))
_EPS = 1e-4


def class_shape(cls: int) -> str:
    return SHAPES[(cls - 1) % len(SHAPES)]


def class_hue(cls: int) -> float:
    # Beyond six classes the golden angle keeps hues apart.
    return CLASS_HUES[cls - 1] if cls <= len(CLASS_HUES) else (cls * 137.508) % 360.0


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(rgb, dtype=np.float64) + (v - c)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class SceneObject:
    cls: int
    shape: str
    center: np.ndarray  # world (x, y, z), y up, resting on the ground
    half: np.ndarray  # half extents (boxes) or (r, r, r) (spheres)
    yaw: float
    albedo: np.ndarray
    stripe: float  # texture period in metres

    @property
    def is_sphere(self) -> bool:
        return SHAPE_IS_SPHERE.get(self.shape, False)


def _object_size(shape: str, rng: np.random.Generator) -> np.ndarray:
    if shape == "crate":
        s = rng.uniform(0.22, 0.4)
        return np.array([s * rng.uniform(0.9, 1.1), s, s * rng.uniform(0.9, 1.1)])
    if shape == "pillar":
        return np.array([rng.uniform(0.12, 0.22), rng.uniform(0.55, 0.95), rng.uniform(0.12, 0.22)])
    if shape == "slab":
        return np.array([rng.uniform(0.4, 0.65), rng.uniform(0.07, 0.13), rng.uniform(0.3, 0.45)])
    if shape == "beam":
        return np.array([rng.uniform(0.6, 0.95), rng.uniform(0.09, 0.15), rng.uniform(0.09, 0.15)])
    r = rng.uniform(0.22, 0.4) if shape == "ball" else rng.uniform(0.35, 0.6)
    return np.array([r, r, r])


class Scene:
    """A random scene; all randomness is drawn here, in a fixed order, from ``rng``."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], num_classes: int,
                 num_parts: int = len(PART_NAMES)):
        h, w = size
        self.size = (h, w)
        self.num_parts = num_parts
        hfov = np.deg2rad(rng.uniform(55.0, 70.0))
        self.focal = (w / 2.0) / np.tan(hfov / 2.0)
        pitch, yaw = np.deg2rad(rng.uniform(8.0, 22.0)), np.deg2rad(rng.uniform(-8.0, 8.0))
        self.origin = np.array([0.0, rng.uniform(1.2, 2.0), 0.0])
        forward = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        right = _normalize(np.cross([0.0, 1.0, 0.0], forward))
        down = np.cross(right, forward)
        self.cam_to_world = np.stack([right, down, forward], axis=1)
        self.wall_z = rng.uniform(7.0, 10.0)
        self.light = _normalize(np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.6, 1.0), rng.uniform(-0.8, -0.2)]))
        self.ambient = rng.uniform(0.3, 0.45)
        self.light_tint = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.85, 1.0)])
        ground_hue = rng.uniform(0, 360)
        self.ground_colors = (_hsv(ground_hue, rng.uniform(0.05, 0.25), rng.uniform(0.4, 0.6)),
                              _hsv(ground_hue + rng.uniform(-20, 20), rng.uniform(0.05, 0.25), rng.uniform(0.25, 0.4)))
        self.tile = rng.uniform(0.5, 1.0)
        wall = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.2), rng.uniform(0.6, 0.8))
        self.wall_colors = (wall, wall * rng.uniform(0.85, 0.95))
        self.wall_stripe = rng.uniform(0.3, 1.2)
        self.noise_sigma = rng.uniform(1.0, 4.0)

        self.objects: list[SceneObject] = []
        half_width = np.tan(hfov / 2.0) * 0.85
        for _ in range(int(rng.integers(3, 8))):
            cls = int(rng.integers(1, num_classes))
            shape = class_shape(cls)
            half = _object_size(shape, rng)
            obj_yaw = rng.uniform(0, np.pi) if not SHAPE_IS_SPHERE.get(shape) else 0.0
            radius = float(np.hypot(half[0], half[2]))
            albedo = _hsv(class_hue(cls) + rng.uniform(-12, 12), rng.uniform(0.55, 0.9), rng.uniform(0.65, 0.95))
            stripe = rng.uniform(0.1, 0.2)
            for _try in range(30):
                z = rng.uniform(2.5, self.wall_z - 0.3 - radius)
                x = z * np.tan(yaw) + rng.uniform(-1.0, 1.0) * z * half_width
                if all(np.hypot(x - o.center[0], z - o.center[2]) > radius + np.hypot(o.half[0], o.half[2]) + 0.05
                       for o in self.objects):
                    self.objects.append(SceneObject(cls, shape, np.array([x, half[1], z]), half, obj_yaw,
                                                    albedo, stripe))
                    break

    # --- ray casting ---

    def cast(self, origins: np.ndarray, dirs: np.ndarray, objects_only: bool = False):
        """Nearest hit per ray: (t, surface id, world normal); id 0 ground, 1 wall, 2 + k object k."""
        n = len(dirs)
        candidates_t, candidates_n = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            if not objects_only:
                t = np.where(dirs[:, 1] < 0, -origins[:, 1] / dirs[:, 1], np.inf)
                candidates_t.append(t)
                candidates_n.append(np.broadcast_to([0.0, 1.0, 0.0], (n, 3)))
                t = np.where(dirs[:, 2] > 0, (self.wall_z - origins[:, 2]) / dirs[:, 2], np.inf)
                candidates_t.append(t)
                candidates_n.append(np.broadcast_to([0.0, 0.0, -1.0], (n, 3)))
            for obj in self.objects:
                t, normal = (self._hit_sphere if obj.is_sphere else self._hit_box)(obj, origins, dirs)
                candidates_t.append(t)
                candidates_n.append(normal)
        offset = 0 if not objects_only else 2
        t_all = np.stack(candidates_t) if candidates_t else np.full((1, n), np.inf)
        t_all = np.where(np.isfinite(t_all) & (t_all > _EPS), t_all, np.inf)
        best = np.argmin(t_all, axis=0)
        t = t_all[best, np.arange(n)]
        if not candidates_n:
            return t, np.full(n, -1), np.zeros((n, 3))
        normals = np.stack(candidates_n)[best, np.arange(n)]
        ids = np.where(np.isfinite(t), best + offset, -1)
        return t, ids, normals

    @staticmethod
    def _hit_sphere(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray):
        r = obj.half[0]
        oc = origins - obj.center
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = 2.0 * np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - r * r
        disc = b * b - 4 * a * c
        t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
        normal = (origins + t[:, None] * dirs - obj.center) / r
        return t, np.nan_to_num(normal)

    @staticmethod
    def _hit_box(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray):
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # local -> world
        o_local = (origins - obj.center) @ rot
        d_local = dirs @ rot
        t1 = (-obj.half - o_local) / d_local
        t2 = (obj.half - o_local) / d_local
        t_near, t_far = np.fmin(t1, t2), np.fmax(t1, t2)
        axis = np.argmax(t_near, axis=1)
        t_enter = t_near[np.arange(len(dirs)), axis]
        t_exit = t_far.min(axis=1)
        hit = (t_enter <= t_exit) & (t_enter > _EPS)
        normal_local = np.zeros_like(d_local)
        normal_local[np.arange(len(dirs)), axis] = -np.sign(d_local[np.arange(len(dirs)), axis])
        return np.where(hit, t_enter, np.inf), normal_local @ rot.T

    # --- rendering ---

    def render(self, rng: np.random.Generator) -> dict:
        h, w = self.size
        u = (np.arange(w) + 0.5 - w / 2.0) / self.focal
        v = (np.arange(h) + 0.5 - h / 2.0) / self.focal
        d_cam = np.stack([np.broadcast_to(u, (h, w)), np.broadcast_to(v[:, None], (h, w)), np.ones((h, w))], -1)
        d_cam = d_cam.reshape(-1, 3)
        # Unnormalised rays with unit z in the camera frame: the hit distance t is the z-depth.
        dirs = d_cam @ self.cam_to_world.T
        origins = np.broadcast_to(self.origin, dirs.shape)
        depth, ids, normals_world = self.cast(origins, dirs)
        hit = ids >= 0
        depth = np.where(hit, depth, 0.0)
        points = origins + depth[:, None] * dirs

        # Labels.
        classes = np.array([0, 0] + [o.cls for o in self.objects])
        on_object = ids >= 2
        semseg = np.where(on_object, classes[np.maximum(ids, 0)], 0)
        band = self._bands(points[:, 1], ids)
        parts = np.where(normals_world[:, 1] > 0.7, 1, 2 + band)
        parts = np.where(on_object, parts, 0)

        image = self._appearance(points, ids, parts, band, normals_world, rng).reshape(h, w, 3)

        normals_cam = normals_world @ self.cam_to_world  # world -> camera frame
        facing_away = np.einsum("ij,ij->i", normals_cam, d_cam) > 0
        normals_cam[facing_away] *= -1
        normals_cam[~hit] = 0.0

        ids2d, parts2d = ids.reshape(h, w), parts.reshape(h, w)
        depth2d, normals2d = depth.reshape(h, w), normals_cam.reshape(h, w, 3)
        return {
            "image": image.astype(np.float32),
            "semseg": semseg.reshape(h, w, 1).astype(np.float32),
            "human_parts": parts2d[..., None].astype(np.float32),
            "sal": self._saliency(ids2d, depth2d)[..., None].astype(np.float32),
            "depth": depth2d[..., None].astype(np.float32),
            "normals": normals2d.astype(np.float32),
            "edge": boundaries(ids2d, parts2d, depth2d, normals2d)[..., None].astype(np.float32),
        }

    def _appearance(self, points: np.ndarray, ids: np.ndarray, parts: np.ndarray, band: np.ndarray,
                    normals_world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """RGB in [0, 255] per ray: albedo x texture x (ambient + direct light unless shadowed) +
        sensor noise."""
        hit = ids >= 0
        on_object = ids >= 2
        albedo = np.empty((len(ids), 3))
        ground = ids == 0
        checker = (np.floor(points[:, 0] / self.tile) + np.floor(points[:, 2] / self.tile)) % 2 == 0
        albedo[ground] = np.where(checker[ground, None], self.ground_colors[0], self.ground_colors[1])
        wall = ids == 1
        stripe = np.floor(points[:, 0] / self.wall_stripe) % 2 == 0
        albedo[wall] = np.where(stripe[wall, None], self.wall_colors[0], self.wall_colors[1])
        albedo[~hit] = 0.0
        for k, obj in enumerate(self.objects):
            mask = ids == k + 2
            if not mask.any():
                continue
            albedo[mask] = obj.albedo * self._texture(obj, points[mask], normals_world[mask])[:, None]
        albedo[on_object & (parts >= 2) & (band % 2 == 1)] *= 0.78

        lambert = np.clip(normals_world @ self.light, 0.0, None)
        lit = lambert > 0
        if self.objects and lit.any():
            shadow_origin = points[lit] + normals_world[lit] * 1e-3
            t_shadow, _, _ = self.cast(shadow_origin, np.broadcast_to(self.light, shadow_origin.shape),
                                       objects_only=True)
            shadowed = np.zeros(len(ids), dtype=bool)
            shadowed[lit] = np.isfinite(t_shadow)
            lambert = np.where(shadowed, 0.0, lambert)
        shade = self.ambient + (1.0 - self.ambient) * lambert
        image = albedo * shade[:, None] * self.light_tint * 255.0
        image = image + rng.normal(0.0, self.noise_sigma, image.shape)
        return np.clip(image, 0.0, 255.0)

    def _bands(self, y: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Band index (0 = top band) of each hit point: P - 2 bands of equal height per object,
        compared against thresholds ``centre + half * (1 - 2 k / (P - 2))`` (with 4 labels, the
        one threshold is the centre itself)."""
        bands = self.num_parts - 2
        centers = np.array([0.0, 0.0] + [o.center[1] for o in self.objects])[np.maximum(ids, 0)]
        halves = np.array([0.0, 0.0] + [o.half[1] for o in self.objects])[np.maximum(ids, 0)]
        band = np.zeros(len(y), dtype=np.int64)
        for k in range(1, bands):
            band += y <= centers + halves * (1.0 - 2.0 * k / bands)
        return band

    @staticmethod
    def _texture(obj: SceneObject, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        local = (points - obj.center) @ np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        period = obj.stripe
        if obj.shape == "crate":
            cells = np.floor(local / period).sum(axis=1) % 2
            return np.where(cells == 0, 1.0, 0.72)
        if obj.shape == "pillar":
            return np.where(np.floor(points[:, 1] / period) % 2 == 0, 1.0, 0.8)
        if obj.shape == "beam":
            return np.where(np.floor(local[:, 0] / period) % 2 == 0, 1.0, 0.75)
        if obj.shape == "globe":
            return np.where(np.floor((normals[:, 1] + 1.0) * 3.0) % 2 == 0, 1.0, 0.7)
        return np.ones(len(points))

    def _saliency(self, ids: np.ndarray, depth: np.ndarray) -> np.ndarray:
        count = np.bincount(ids.ravel() + 1, minlength=len(self.objects) + 3)[3:]
        total = np.bincount(ids.ravel() + 1, weights=depth.ravel(), minlength=len(self.objects) + 3)[3:]
        visible = count >= max(4, ids.size // 2000)
        if not visible.any():
            return np.zeros(ids.shape)
        mean_depth = np.where(visible, total / np.maximum(count, 1), np.inf)
        salient = np.flatnonzero(mean_depth <= mean_depth.min() * SALIENT_DEPTH_RATIO) + 2
        return np.isin(ids, salient)


def boundaries(ids: np.ndarray, parts: np.ndarray, depth: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """1-pixel boundaries between 4-neighbours on different surfaces or parts, or across a crease
    (normals more than 30 deg apart), marked on the pixel nearer the camera."""
    edge = np.zeros(ids.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        cos = np.einsum("ijc,ijc->ij", normals[a], normals[b])
        change = (ids[a] != ids[b]) | (parts[a] != parts[b]) | (cos < CREASE_COS)
        first_nearer = depth[a] <= depth[b]
        edge[a] |= change & first_nearer
        edge[b] |= change & ~first_nearer
    return edge


def render_sample(seed: int, split: str, index: int, size: tuple[int, int], num_classes: int = 7,
                  num_parts: int = len(PART_NAMES)) -> dict:
    """Raw sample ``index`` of ``(seed, split)``: HWC float32 arrays (see transforms.py) + name."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split '{split}' for the synthetic dataset (known: {', '.join(SPLIT_CODES)})")
    if num_classes < 2:
        raise ValueError(f"the synthetic dataset needs at least 2 semseg classes, got {num_classes}")
    _check_parts(num_parts)
    rng = np.random.default_rng(seed_sequence(seed, SPLIT_CODES[split], index))
    scene = Scene(rng, (int(size[0]), int(size[1])), num_classes, num_parts)
    sample = scene.render(rng)
    sample["name"] = f"synthetic-{split}-{seed}-{index:06d}"
    return sample


def _check_parts(num_parts: int) -> None:
    if not MIN_PARTS <= num_parts <= MAX_PARTS:
        raise ValueError(f"the synthetic scenes have {MIN_PARTS} to {MAX_PARTS} part labels; the "
                         f"task profile asks for {num_parts} (use e.g. --tasks human_parts:7)")


class SyntheticDataset(Dataset):
    """Synthetic scenes as a map-style torch dataset of samples in the runtime's format.

    ``augment`` applies the official train pipeline (random scale, crop, flip, photometric) on top
    of the rendering, drawn from ``(seed, epoch, index)``; call :meth:`set_epoch` every epoch.
    ``cache`` keeps rendered scenes in memory (per process) so later epochs skip the ray casting.
    """

    def __init__(self, split: str = "train", size: tuple[int, int] | None = None, length: int = 1000,
                 seed: int = 0, tasks: TaskProfile | str | None = None, augment: bool = False,
                 cache: bool = False):
        from .transforms import TestTransform, TrainTransform

        profile = tasks if isinstance(tasks, TaskProfile) else resolve_tasks(tasks) if tasks else PROFILES["synthetic"]
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split '{split}' for the synthetic dataset (known: {', '.join(SPLIT_CODES)})")
        if length < 1:
            raise ValueError(f"synthetic dataset length must be >= 1, got {length}")
        names = profile.task_names
        self.num_parts = profile.task("human_parts").channels if "human_parts" in names else len(PART_NAMES)
        _check_parts(self.num_parts)
        self.num_classes = profile.task("semseg").channels if "semseg" in names else len(CLASS_HUES) + 1
        if self.num_classes < 2:
            raise ValueError(f"the synthetic dataset needs at least 2 semseg classes, got {self.num_classes}")
        self.split, self.seed, self.length = split, int(seed), int(length)
        self.size = tuple(int(s) for s in (size or profile.input_size))
        self.profile = profile
        self.tasks = names
        self.edge_pos_weight = profile.edge_pos_weight
        self.augment = augment
        self.transform = TrainTransform(self.size) if augment else TestTransform(self.size)
        self.epoch = 0
        self._cache: dict[int, dict] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} out of range for a synthetic dataset of length {self.length}")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = render_sample(self.seed, self.split, index, self.size, self.num_classes, self.num_parts)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng(self.seed, self.epoch, index) if self.augment else None
        return self.transform(self.raw(index), self.tasks, rng)
