"""Datasets of the training runtime and the sample format they share.

A dataset item is a dict holding only the tasks of the profile::

    image        FloatTensor[3, H, W]  ImageNet mean/std normalised, padding 0
    semseg       LongTensor[H, W]      255 = ignore
    human_parts  LongTensor[H, W]      255 = ignore (all 255 when an image has no part annotation)
    sal          LongTensor[H, W]      0/1, 255 = ignore
    depth        FloatTensor[1, H, W]  metres, 255 = invalid
    normals      FloatTensor[3, H, W]  unit vectors, 255 in all channels = invalid
    edge         FloatTensor[1, H, W]  0/1, 255 = padding
    meta         {"name": str, "size": [h, w]}  size of the content before centre padding
                 (+ "skipped": [reason, ...] when unreadable samples were replaced by this one)

Batches come from :func:`collate_samples` (torch's default collate, ``meta`` kept as a list).

The real datasets (NYUD-v2, PASCAL-Context) live in ``folder_datasets.py``, the synthetic scenes
in ``synthetic.py``. This module builds any of them by name (``build_dataset``), for a run config
(``open_dataset``), checks them before a run (``check_dataset``) and guards the training loop
against unreadable samples (``GuardedSamples``).
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset, default_collate

from ..tasks import PROFILES, TaskProfile, resolve_tasks
from .config import SYNTHETIC_VAL_IMAGES
from .folder_datasets import FOLDER_DATASETS, DatasetError

SYNTHETIC_TRAIN_IMAGES = 1000  # the synthetic train split unless dataset.length says otherwise


def collate_samples(batch: list[dict]) -> dict:
    """torch's default collate for the tensors; ``meta`` becomes a list of dicts."""
    metas = [item["meta"] for item in batch]
    out = default_collate([{k: v for k, v in item.items() if k != "meta"} for item in batch])
    out["meta"] = metas
    return out


# --- file readers: every failure names the file ---

def build_dataset(name: str, root: str | Path | None, split: str, profile: TaskProfile | str | None = None,
                  input_size: tuple[int, int] | None = None, augment: bool = False, seed: int = 0,
                  length: int | None = None, cache: bool = False) -> Dataset:
    """A dataset by name ("synthetic", "nyud", "pascal") giving samples in the runtime's format.

    ``input_size`` defaults to the dataset's official size (NYUD 425x560, PASCAL 512x512) and to the
    profile's for the synthetic scenes. ``augment`` selects the official train pipeline (otherwise
    normalise + pad). ``length`` and ``cache`` apply to the synthetic dataset only.
    """
    if isinstance(profile, TaskProfile):
        resolved = profile
    elif profile:
        resolved = resolve_tasks(profile)
    else:
        resolved = PROFILES[name] if name in PROFILES else PROFILES["synthetic"]
    if name == "synthetic":
        from .synthetic import SyntheticDataset

        default_length = SYNTHETIC_TRAIN_IMAGES if split == "train" else SYNTHETIC_VAL_IMAGES
        return SyntheticDataset(split, size=input_size or resolved.input_size, length=length or default_length,
                                seed=seed, tasks=resolved, augment=augment, cache=cache)
    if name not in FOLDER_DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (known: synthetic, nyud, pascal)")
    size = input_size or PROFILES[name].input_size
    return FOLDER_DATASETS[name](root, split, resolved, size, augment, seed)


def open_dataset(cfg, split: str, augment: bool = False, whole: bool = False) -> Dataset:
    """The ``split`` of the run config's dataset, for its task profile and input size.

    The synthetic val split is sized to the run (``RunConfig.synthetic_val_length``) unless
    ``whole`` (``mtl-dsl eval``) or ``dataset.val_length`` asks for all of it."""
    extra = {}
    if cfg.dataset.name == "synthetic":
        if split == "train":
            length = cfg.dataset.length
        elif whole:
            length = cfg.dataset.val_length or SYNTHETIC_VAL_IMAGES
        else:
            length = cfg.synthetic_val_length()
        extra = {"length": length, "cache": cfg.dataset.cache}
    return build_dataset(cfg.dataset.name, cfg.dataset.root, split, cfg.profile(), cfg.input_size(),
                         augment, cfg.training.seed, **extra)


class GuardedSamples:
    """A dataset whose unreadable samples stop the run with one line naming the file (``BadSample``),
    or with ``skip``, are replaced by the next readable sample (deterministic, so a resumed run
    replaces them the same way) and counted in the sample's ``meta["skipped"]``."""

    def __init__(self, dataset, skip: bool = False, tries: int = 100):
        self.dataset, self.skip, self.tries = dataset, skip, tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from .failures import BadSample

        skipped: list[str] = []
        for offset in range(min(self.tries, len(self.dataset))):
            try:
                sample = self.dataset[(index + offset) % len(self.dataset)]
            except DatasetError as exc:
                if not self.skip:
                    raise BadSample(f"{exc} (set dataset.skip_bad_samples=true to skip such "
                                    f"samples)") from None
                skipped.append(str(exc))
                continue
            if skipped:
                sample["meta"] = dict(sample["meta"], skipped=skipped)
            return sample
        raise BadSample(f"no readable sample among {len(skipped)} in a row: {skipped[0]}")


def check_dataset(cfg) -> list[str]:
    """Open the splits once (on the driver) and read the headers of their files, so that a bad
    folder layout or an unreadable file fails before any worker starts (``UsageError`` naming
    it); with ``dataset.skip_bad_samples``, returns notes on the files that will be skipped."""
    from ..errors import SpecError, usage_error

    notes = []
    for split in ("train", "val"):
        try:
            dataset = open_dataset(cfg, split)
        except SpecError:
            raise
        except (DatasetError, FileNotFoundError, ValueError, OSError) as exc:
            raise usage_error(cfg.dataset.root or "dataset",
                              str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
        if split == "train" and len(dataset) < cfg.per_worker_batch() * cfg.run.workers:
            raise usage_error(cfg.dataset.root or "dataset",
                              f"the training split has {len(dataset)} images, fewer than one batch "
                              f"({cfg.per_worker_batch()} x {cfg.run.workers} workers)")
        bad = dataset.check_files() if hasattr(dataset, "check_files") else []
        if not bad:
            continue
        first = f"{bad[0][0]}: {bad[0][1]}"
        more = f" ({len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        if not cfg.dataset.skip_bad_samples:
            raise usage_error(str(bad[0][0]), f"unreadable file in the {split} split: {first}{more}; "
                                              f"fix or remove it, or set dataset.skip_bad_samples=true")
        notes.append(f"{len(bad)} unreadable file(s) in the {split} split; their samples will be "
                     f"skipped (first: {first})")
    return notes


__all__ = ["DatasetError", "GuardedSamples", "build_dataset", "check_dataset", "collate_samples",
           "open_dataset"]
