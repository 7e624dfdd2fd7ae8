"""Task profiles: which dense-prediction tasks a model predicts, and with how many channels.

A spec never names a dataset's tasks itself; it loops over ``tasks``. The task set comes from a
profile (``nyud``, ``pascal``, ``synthetic``) or an explicit list such as ``semseg:13,depth``, so
one spec serves every dataset. This module is pure Python (no torch) because the front-end uses it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

TaskKind = Literal["semseg", "human_parts", "sal", "normals", "depth", "edge"]

# Channels of the final prediction and of ATRC's auxiliary "label" prediction for each kind.
# None means "the number of classes", which the profile or the explicit list must give.
_FINAL_CHANNELS: dict[str, int | None] = {
    "semseg": None,
    "human_parts": 7,
    "sal": 2,  # two-class softmax, as the official code predicts saliency
    "normals": 3,
    "depth": 1,
    "edge": 1,
}
_AUX_CHANNELS: dict[str, int | None] = {
    "semseg": None,  # one per class
    "human_parts": None,
    "sal": 2,
    "normals": 40,  # k-means centroids on the unit sphere (ATRC)
    "depth": 40,  # log-spaced depth bins (ATRC)
    "edge": 2,
}
KNOWN_TASKS: tuple[str, ...] = tuple(_FINAL_CHANNELS)
MAX_CLASSES = 10_000

# The label contract of every dataset and loss: 255 marks a pixel without ground truth (class maps,
# depth, normals in all channels, edge padding), as in the ATRC code base (brdav/atrc,
# src/data/*.py and src/model/criterion.py, ``ignore_index=255``).
IGNORE_INDEX = 255
# ImageNet mean and standard deviation of RGB in [0, 1], used to normalise every input image
# (torchvision's and timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The datasets the runtime reads; each has the task profile of the same name below.
DATASETS: tuple[str, ...] = ("synthetic", "nyud", "pascal")


class TaskSpec(BaseModel):
    """One task of the model: its name (also its kind) and its output channels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TaskKind
    channels: int
    aux_channels: int

    @property
    def is_classification(self) -> bool:
        return self.name in ("semseg", "human_parts", "sal")


class TaskProfile(BaseModel):
    """A named task set with the input size its dataset is trained and evaluated at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tasks: tuple[TaskSpec, ...]
    input_size: tuple[int, int]
    edge_pos_weight: float = 0.95

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def make_task(name: str, classes: int | None = None) -> TaskSpec:
    """Build a TaskSpec for a known task kind; ``classes`` is required for semseg."""
    if name not in _FINAL_CHANNELS:
        raise TaskError(f"unknown task '{name}'", name)
    final = _FINAL_CHANNELS[name]
    if classes is not None:
        if name not in ("semseg", "human_parts"):
            raise TaskError(f"task '{name}' has a fixed number of channels ({final}); "
                            f"only semseg and human_parts take a class count", name)
        if not 1 <= classes <= MAX_CLASSES:
            raise TaskError(f"task '{name}': class count {classes} is out of range 1..{MAX_CLASSES}", name)
        final = classes
    if final is None:
        raise TaskError(f"task '{name}' needs a class count, e.g. '{name}:40'", name)
    aux = _AUX_CHANNELS[name]
    return TaskSpec(name=name, channels=final, aux_channels=final if aux is None else aux)


class TaskError(ValueError):
    """A task list or profile name that cannot be understood."""

    def __init__(self, message: str, token: str = ""):
        super().__init__(message)
        self.message = message
        self.token = token


PROFILES: dict[str, TaskProfile] = {
    "nyud": TaskProfile(
        name="nyud",
        tasks=(make_task("semseg", 40), make_task("depth"), make_task("normals"), make_task("edge")),
        input_size=(425, 560),
        edge_pos_weight=0.8,
    ),
    "pascal": TaskProfile(
        name="pascal",
        tasks=(make_task("semseg", 21), make_task("human_parts", 7), make_task("sal"),
               make_task("normals"), make_task("edge")),
        input_size=(512, 512),
        edge_pos_weight=0.95,
    ),
    # The embedded synthetic scenes (mtl_dsl.runtime.synthetic): 6 object classes + background,
    # 3 part labels + background, and every geometric task.
    "synthetic": TaskProfile(
        name="synthetic",
        tasks=(make_task("semseg", 7), make_task("human_parts", 4), make_task("sal"),
               make_task("normals"), make_task("depth"), make_task("edge")),
        input_size=(96, 128),
        edge_pos_weight=0.95,
    ),
}
DEFAULT_PROFILE = "synthetic"


def resolve_tasks(text: str | None) -> TaskProfile:
    """A profile name, or an explicit comma-separated list such as ``semseg:13,depth,normals``;
    ``None`` is the default profile, an empty text an error.

    An explicit list takes its class counts from the synthetic profile where it gives none, and
    the synthetic input size.
    """
    if text is None:
        return PROFILES[DEFAULT_PROFILE]
    text = text.strip()
    if not text:
        raise TaskError("the task list is empty (give a profile such as nyud, pascal or synthetic, "
                        "or tasks such as semseg,depth)", text)
    if text in PROFILES:
        return PROFILES[text]
    if "," not in text and ":" not in text and text not in _FINAL_CHANNELS:
        from difflib import get_close_matches

        options = list(PROFILES) + list(_FINAL_CHANNELS)
        close = get_close_matches(text, options, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TaskError(
            f"unknown task profile or task '{text}' (profiles: {', '.join(PROFILES)}; "
            f"tasks: {', '.join(_FINAL_CHANNELS)}){hint}", text)
    tasks: list[TaskSpec] = []
    base = PROFILES[DEFAULT_PROFILE]
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise TaskError(f"empty entry in task list '{text}'", text)
        name, _, count = item.partition(":")
        name = name.strip()
        if name not in _FINAL_CHANNELS:
            from difflib import get_close_matches

            close = get_close_matches(name, list(_FINAL_CHANNELS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TaskError(f"unknown task '{name}' (known: {', '.join(_FINAL_CHANNELS)}){hint}", name)
        if any(t.name == name for t in tasks):
            raise TaskError(f"task '{name}' is listed twice", name)
        classes: int | None = None
        if count.strip():
            try:
                classes = int(count)
            except ValueError:
                raise TaskError(f"task '{name}': class count '{count}' is not an integer", item) from None
        elif name in ("semseg", "human_parts"):
            classes = base.task(name).channels
        tasks.append(make_task(name, classes))
    return TaskProfile(name="custom", tasks=tuple(tasks), input_size=base.input_size,
                       edge_pos_weight=base.edge_pos_weight)
