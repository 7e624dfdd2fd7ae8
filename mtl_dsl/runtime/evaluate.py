"""Evaluation on the validation split, and PNG predictions for images.

``evaluate_model`` is used by the training loop (sharded over workers: each rank evaluates every
``world``-th image, then the metric sums are all-reduced) and by ``mtl-dsl eval``. Metrics are the
dataset-pooled ones of ``metrics.py``; Delta_m is only computed against an explicit baseline file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import usage_error
from .config import RunConfig


def make_eval_loader(cfg: RunConfig, rank: int = 0, world: int = 1, workers: int = 0,
                     batch_size: Optional[int] = None, whole: bool = False):
    """The validation loader of one rank (every ``world``-th image); ``whole``: the whole split,
    not the part sized to the run."""
    from torch.utils.data import DataLoader, Subset

    from .datasets import GuardedSamples, collate_samples, open_dataset

    dataset = GuardedSamples(open_dataset(cfg, "val", whole=whole), cfg.dataset.skip_bad_samples)
    shard = Subset(dataset, list(range(rank, len(dataset), world)))  # no padding: no double counting
    return DataLoader(shard, batch_size=batch_size or cfg.per_worker_batch(), shuffle=False,
                      num_workers=workers, collate_fn=collate_samples)


def evaluate_model(model, loader, profile, dataset_name: str, device, world: int = 1,
                   max_batches: Optional[int] = None, amp_dtype=None) -> tuple[dict[str, float], int]:
    """(pooled metrics of ``model`` over ``loader``, images evaluated); all ranks must call it
    when world > 1."""
    import torch

    from .metrics import MetricSet

    metric_set = MetricSet.for_profile(profile, dataset_name)
    images = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                inputs = batch["image"].to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(inputs)
                outputs = {t: {"final": o["final"].float()} for t, o in outputs.items()}
                metric_set.update(outputs, batch)
                images += inputs.shape[0]
    finally:
        model.train(was_training)
    if world > 1:
        images = _all_reduce_state(metric_set, images, device)
    return {k: float(v) for k, v in metric_set.compute().items()}, images


def _all_reduce_state(metric_set, images: int, device) -> int:
    """Sum the metric sums (and the image count) over the workers, in place."""
    import torch
    import torch.distributed as dist

    state = metric_set.state_tensors()
    keys = sorted(state)
    flat = torch.cat([state[k].reshape(-1).to(torch.float64) for k in keys]
                     + [torch.tensor([float(images)], dtype=torch.float64)])
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = flat.to(backend_device)
    dist.all_reduce(flat)
    flat = flat.cpu()
    out, offset = {}, 0
    for k in keys:
        n = state[k].numel()
        out[k] = flat[offset:offset + n].reshape(state[k].shape)
        offset += n
    metric_set.load_state_tensors(out)
    return int(round(float(flat[-1])))


# --- loading a trained model -----------------------------------------------------------------------


def load_trained_model(spec: Any, checkpoint: str | Path, config: RunConfig | None = None,
                       skipped: list | None = None, check_paths: bool = True):
    """(model with the checkpoint's weights, run config, checkpoint) — refuses a graph mismatch.

    ``checkpoint`` is a checkpoint folder or a run folder (its newest usable checkpoint, chosen
    again if a live run prunes it while it is read; the corrupt newer ones are appended to
    ``skipped``), a local path, a URI or a storage ``Location``. Without ``config``, the run config
    stored in the checkpoint (its dataset folder checked only with ``check_paths``)."""
    from ..api import build_model
    from .checkpoints import load_model_weights, load_newest, meta_file_of
    from .config import load_config

    loaded = load_newest(checkpoint, skipped, with_state=False)
    if config is None:
        config = load_config(base=(loaded.meta.get("run_config") or {}, meta_file_of(loaded.path)),
                             check_paths=check_paths)
    model = build_model(spec, **config.model_arguments())
    load_model_weights(model, loaded)
    model.eval()
    return model, config, loaded


def load_official_model(spec: Any, weights: str | Path, config: RunConfig,
                        weights_map: str = "official", allow_partial: bool = False):
    """(model with an official file's weights, read through the spec's weights map, run config,
    what it is); the conversion report goes to stderr."""
    import sys

    from ..weights.convert import load_official_model as load

    config = config.for_spec(spec)  # no tasks given: the profile the spec's model states
    model, loaded = load(spec, weights, config, weights_map, allow_partial)
    print(loaded.report, file=sys.stderr)
    return model, config, f"the official weights {weights}"


def run_eval(spec: Any, checkpoint: str | Path | None, config: RunConfig | None = None,
             baseline: str | Path | None = None, device: str | None = None,
             max_batches: Optional[int] = None, weights: str | Path | None = None,
             weights_map: str = "official",
             allow_partial: bool = False) -> tuple[dict[str, float], str]:
    """Evaluate a checkpoint (or an official file, ``weights``, with ``config``) on the val split;
    returns (metrics, printed text): which checkpoint (step and folder, and the corrupt newer ones
    skipped), then the metrics table."""
    import torch

    from .baseline import BaselineError, delta_m, format_metrics_table, load_baseline

    base = None
    if baseline is not None:
        try:
            base = load_baseline(baseline)
        except BaselineError as exc:
            raise usage_error(str(baseline), exc.message, line=exc.line, column=exc.column) from None
    skipped: list = []
    if weights is not None:
        model, cfg, source = load_official_model(spec, weights, config, weights_map, allow_partial)
    else:
        model, cfg, loaded = load_trained_model(spec, checkpoint, config, skipped)
        source = f"the checkpoint of step {loaded.step} ({loaded.path})"
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    profile = cfg.profile()
    loader = make_eval_loader(cfg, whole=True)
    metrics, images = evaluate_model(model, loader, profile, cfg.dataset.name, dev,
                                     max_batches=max_batches)
    lines = [f"skipped checkpoint {path} (cannot be loaded: {why})" for path, why in skipped]
    lines.append(f"evaluated {source} on {images} {cfg.dataset.name} val images")
    table = "\n".join(lines) + "\n" + (format_metrics_table(metrics, base, split="val") or "")
    if base is not None:
        try:
            value = delta_m(metrics, base)
        except KeyError as exc:
            raise usage_error(str(baseline), str(exc).strip("'\"")) from None
        table += f"\ndelta_m vs {baseline} (selected on {base.selection_split}): {value:+.2f} %"
    return metrics, table


# --- predictions as PNG --------------------------------------------------------------------------------


def _palette(n: int):
    import numpy as np

    # The PASCAL VOC bit-interleaving palette: distinct, stable colours for any class count.
    palette = np.zeros((max(n, 1), 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def prediction_images(outputs: dict, profile) -> dict:
    """{task: HxWx3 or HxW uint8 array} for one image (batch of 1)."""
    import numpy as np
    import torch

    images = {}
    for task in profile.tasks:
        pred = outputs[task.name]["final"][0].float()
        if task.name in ("semseg", "human_parts"):
            labels = pred.argmax(0).cpu().numpy()
            images[task.name] = _palette(task.channels)[labels]
        elif task.name == "sal":
            prob = torch.softmax(pred, 0)[1] if pred.shape[0] == 2 else torch.sigmoid(pred[0])
            images[task.name] = (prob.cpu().numpy() * 255).round().astype(np.uint8)
        elif task.name == "edge":
            images[task.name] = (torch.sigmoid(pred[0]).cpu().numpy() * 255).round().astype(np.uint8)
        elif task.name == "normals":
            unit = torch.nn.functional.normalize(pred, dim=0)
            images[task.name] = ((unit.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
        elif task.name == "depth":
            d = pred[0].clamp(min=0).cpu().numpy()
            lo, hi = float(d.min()), float(d.max())
            images[task.name] = ((d - lo) / max(hi - lo, 1e-6) * 255).round().astype(np.uint8)
    return images


def load_image(path: Path, size: tuple[int, int]):
    """An RGB image resized to the model's input size, normalised as in training (ImageNet);
    16-bit and palette images are converted to 8-bit RGB (``images.rgb8``)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from .images import ImageModeError, rgb8
    from .transforms import normalize

    try:
        with Image.open(path) as img:
            rgb = Image.fromarray(rgb8(img))
    except ImageModeError as exc:
        raise usage_error(str(path), f"cannot use image {path}: {exc}") from None
    except Image.DecompressionBombError as exc:  # a header claiming more pixels than PIL decodes
        raise usage_error(str(path), f"cannot use image {path}: {exc}") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise usage_error(str(path), f"cannot read image {path}: {exc}") from None
    original = rgb.size
    rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
    array = normalize(np.asarray(rgb, dtype=np.float32))
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
    return tensor, original


def run_predict(spec: Any, checkpoint: Any, images: list[str | Path], out: Any,
                config: RunConfig | None = None, weights: str | Path | None = None,
                weights_map: str = "official", allow_partial: bool = False) -> list:
    """A PNG per task per image into ``out``: a local folder, or a storage URI / ``Location``
    (written locally, then copied there); returns the files written."""
    import shutil
    import tempfile

    from .storage import Location, is_remote, open_location

    more = dict(config=config, weights=weights, weights_map=weights_map, allow_partial=allow_partial)
    if isinstance(out, Location) or is_remote(out):
        target = out if isinstance(out, Location) else open_location(str(out), where="--out")
        if target.local:
            return _predict_to_folder(spec, checkpoint, images, target.local_path, **more)
        staging = Path(tempfile.mkdtemp(prefix="mtl-dsl-predict-"))
        try:
            written = _predict_to_folder(spec, checkpoint, images, staging, **more)
            target.upload(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [target.child(p.name) for p in written]
    return _predict_to_folder(spec, checkpoint, images, Path(out), **more)


def _predict_to_folder(spec: Any, checkpoint: Any, images: list[str | Path], out: Path,
                       config: RunConfig | None, weights: str | Path | None, weights_map: str,
                       allow_partial: bool) -> list[Path]:
    import torch
    from PIL import Image

    if weights is not None:
        model, cfg, _ = load_official_model(spec, weights, config, weights_map, allow_partial)
    else:
        model, cfg, _ = load_trained_model(spec, checkpoint, config, check_paths=False)
    profile = cfg.profile()
    size = cfg.input_size()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        path = Path(path)
        if not path.is_file():
            raise usage_error(str(path), f"image not found: {path}")
        tensor, original = load_image(path, size)
        with torch.no_grad():
            outputs = model(tensor.unsqueeze(0))
        for task, array in prediction_images(outputs, profile).items():
            image = Image.fromarray(array).resize(original, Image.NEAREST if task in ("semseg", "human_parts") else Image.BILINEAR)
            target = out / f"{path.stem}_{task}.png"
            image.save(target)
            written.append(target)
    return written
