"""Fault campaign cases: what a user gives that is wrong (config files, --set and flags,
hostile specs, images, checkpoints, dataset folders). Registered with ``@case``; run by
``fault_campaign.py``."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from fault_harness import Context, Verdict, case, judge_error, judge_ok, plain_train, step_dir


# --- bad config files ------------------------------------------------------------------------------

def _bad_config(ctx: Context, v: Verdict, name: str, text: str | bytes, *fragments: str) -> None:
    path = ctx.file(name, text)
    judge_error(v, ctx.cli(*plain_train("--config", str(path))), 2, str(path), *fragments)


@case("bad configs", "invalid-yaml", "file:line:col of the syntax error")
def _(ctx, v):
    _bad_config(ctx, v, "a.yaml", "training:\n  iterations: [3\n", "invalid YAML", ":3:1:")


@case("bad configs", "unknown-key-far", "unknown key: lists the keys of its section")
def _(ctx, v):
    _bad_config(ctx, v, "b.yaml", "schedule:\n  wobble: 1\n", ":2:3:", "the keys of 'schedule' are")


@case("bad configs", "unknown-key-close", "unknown key: did you mean")
def _(ctx, v):
    _bad_config(ctx, v, "c.yaml", "optimizer:\n  momentun: 0.9\n", "did you mean 'momentum'")


@case("bad configs", "wrong-type", "iterations: lots -> its line, 'valid integer'")
def _(ctx, v):
    _bad_config(ctx, v, "d.yaml", "training:\n  iterations: lots\n", ":2:3:", "integer")


@case("bad configs", "duplicate-key", "a key given twice is an error at the second (YAML keeps the last)")
def _(ctx, v):
    _bad_config(ctx, v, "e.yaml", "training:\n  iterations: 3\n  iterations: 5\n", ":3:3:", "twice")


@case("bad configs", "alias-bomb-overrides", "alias bomb in model.overrides refused in one line, at once")
def _(ctx, v):
    items = ["a0: &a0 [" + ", ".join(["1"] * 10) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    _bad_config(ctx, v, "f.yaml", "model:\n  overrides: {" + ", ".join(items) + "}\n", "expands to more than")


@case("bad configs", "huge-file", "a 50 MB config is refused before it is read")
def _(ctx, v):
    path = ctx.work / "files" / "huge.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"# " + b"x" * (50 * 2**20) + b"\n")
    judge_error(v, ctx.cli(*plain_train("--config", str(path))), 2, "too large")


@case("bad configs", "deep-nesting", "200 nested lists refused in one line")
def _(ctx, v):
    _bad_config(ctx, v, "g.yaml", "model:\n  overrides:\n    x: " + "[" * 200 + "]" * 200 + "\n", "nested more than")


@case("bad configs", "top-level-list", "a list where a mapping belongs")
def _(ctx, v):
    _bad_config(ctx, v, "h.yaml", "- training\n- 3\n", "mapping")


@case("bad configs", "binary-junk", "random bytes: one error naming the file")
def _(ctx, v):
    _bad_config(ctx, v, "i.yaml", bytes(range(256)) * 4)


@case("bad configs", "missing-file", "a config file that does not exist")
def _(ctx, v):
    judge_error(v, ctx.cli(*plain_train("--config", str(ctx.work / "nope.yaml"))), 2, "not found")


@case("bad configs", "config-is-a-folder", "a folder given as the config file")
def _(ctx, v):
    judge_error(v, ctx.cli(*plain_train("--config", str(ctx.work))), 2, str(ctx.work))


@case("bad configs", "empty-task-list", "tasks: [] is an error, not the default tasks")
def _(ctx, v):
    path = ctx.file("j.yaml", "# the tasks\ntasks: []\n")
    judge_error(v, ctx.cli(*plain_train("--config", str(path))), 2, f"{path}:2:1:", "task list is empty")


@case("bad configs", "min-lr-above-lr", "schedule.min_lr at or above the learning rate")
def _(ctx, v):
    _bad_config(ctx, v, "k.yaml", "optimizer: {lr: 0.001}\nschedule: {min_lr: 0.01}\n", "not below")


@case("bad configs", "unknown-recipe", "--recipe nope: lists the recipes, says 'recipe'")
def _(ctx, v):
    judge_error(v, ctx.cli(*plain_train("--recipe", "nope")), 2, "--recipe nope", "recipes:")


@case("bad configs", "preset-key-in-config", "'preset:' in a run config points to 'recipe:' and model.preset")
def _(ctx, v):
    _bad_config(ctx, v, "l.yaml", "# a recipe\npreset: demt\n", ":2:1:", "recipe: NAME", "model.preset")


# --- bad --set and flags -----------------------------------------------------------------------------

def _bad_flag(ctx: Context, v: Verdict, flags: list[str], *fragments: str) -> None:
    judge_error(v, ctx.cli(*plain_train(*flags), timeout=300), 2, *fragments)


@case("bad --set", "set-without-equals", "--set lr names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "lr"], "--set lr")


@case("bad --set", "set-bool-batch", "training.batch_size=true is not 1")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "training.batch_size=true"], "--set training.batch_size=true", "integer")


@case("bad --set", "set-float-iterations", "training.iterations=2.0 is not an integer")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "training.iterations=2.0"], "integer")


@case("bad --set", "set-unknown-key", "optimizer.momentun: did you mean")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "optimizer.momentun=0.9"], "did you mean 'momentum'")


@case("bad --set", "set-unknown-model-parameter", "wobble=3: the model's parameters are listed")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "wobble=3"], "wobble")


@case("bad --set", "set-dim-not-a-number", "dim=abc: one error, no traceback")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dim=abc"], "dim")


@case("bad --set", "set-dim-fraction", "dim=64.5: one error, no traceback")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dim=64.5"], "dim")


@case("bad --set", "tasks-empty", "--tasks '' is an error")
def _(ctx, v):
    _bad_flag(ctx, v, ["--tasks", ""], "--tasks ''", "task list is empty")


@case("bad --set", "input-zero", "--input 0x0 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--input", "0x0"], "--input 0x0")


@case("bad --set", "workers-zero", "--workers 0 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--workers", "0"], "--workers 0")


@case("bad --set", "iterations-negative", "--iterations -1 names the flag")
def _(ctx, v):
    _bad_flag(ctx, v, ["--iterations", "-1"], "--iterations -1")


@case("bad --set", "unknown-dataset", "dataset.name=imagenet lists the datasets")
def _(ctx, v):
    _bad_flag(ctx, v, ["--set", "dataset.name=imagenet"], "'synthetic', 'nyud' or 'pascal'")


@case("bad --set", "unknown-task", "--tasks semseg,segsem lists the tasks")
def _(ctx, v):
    _bad_flag(ctx, v, ["--tasks", "semseg,segsem"], "segsem")


# --- hostile specs ------------------------------------------------------------------------------------

def _bad_spec(ctx: Context, v: Verdict, spec: Path | str, *fragments: str, lines: int = 6) -> None:
    judge_error(v, ctx.cli("train", str(spec), "--plain", "--iterations", "1"), 2, *fragments,
                lines=lines, spec=True)


@case("hostile specs", "spec-missing", "a spec that does not exist")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.work / "nope.mtl", "nope.mtl")


@case("hostile specs", "spec-binary-junk", "random bytes as a spec: one error")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.file("junk.mtl", bytes(range(256)) * 8), "junk.mtl")


@case("hostile specs", "spec-import-cycle", "a imports b imports a: one error naming the cycle")
def _(ctx, v):
    ctx.file("b.mtl", 'import "a.mtl"\n')
    _bad_spec(ctx, v, ctx.file("a.mtl", 'import "b.mtl"\n'), "a.mtl")


@case("hostile specs", "spec-symlink-to-passwd", "a .mtl link to /etc/passwd: refused, its text not echoed")
def _(ctx, v):
    link = ctx.work / "files" / "passwd.mtl"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/etc/passwd")
    _bad_spec(ctx, v, link, "passwd")
    done = ctx.cli("check", str(link))
    v.need("root:" not in done.err, "the target's text was echoed")


@case("hostile specs", "spec-huge", "a 5 MB spec is refused by its size")
def _(ctx, v):
    _bad_spec(ctx, v, ctx.file("huge.mtl", "# " + "x" * (5 * 2**20) + "\n"), "huge.mtl")


@case("hostile specs", "spec-deep-expression", "10,000 nested parentheses: one error, no RecursionError")
def _(ctx, v):
    text = "model m(dim = " + "(" * 10_000 + "1" + ")" * 10_000 + ") {\n  out[t] = 1\n}\n"
    _bad_spec(ctx, v, ctx.file("deep.mtl", text), "deep.mtl")


@case("hostile specs", "spec-reserved-node-name", "a node named add_submodule is refused at check time")
def _(ctx, v):
    text = ('model m() {\n  add_submodule = upsample_concat(backbone("resnet18", levels = [1, 2]))\n'
            '  for t in tasks {\n    out[t] = dense_head(add_submodule, task = t, width = 8)\n  }\n}\n')
    _bad_spec(ctx, v, ctx.file("reserved.mtl", text), "add_submodule")


# --- bad images (predict) ---------------------------------------------------------------------------

def _png(path: Path, width: int, height: int, bit_depth: int, colour: int, raw: bytes) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _predict(ctx: Context, image: Path) -> Done:
    return ctx.cli("predict", "baseline_mt", "--checkpoint", str(ctx.reference()), str(image),
                   "--out", str(ctx.work / "predictions" / image.stem))


def _predict_ok(ctx: Context, v: Verdict, image: Path) -> None:
    done = _predict(ctx, image)
    judge_ok(v, done)
    written = sorted((ctx.work / "predictions" / image.stem).rglob("*.png"))
    v.need(len(written) == 2, f"{len(written)} PNGs written, expected one per task")


@case("bad images", "image-16-bit", "a 16-bit PNG is scaled to 8 bits and predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "deep.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)).save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-palette", "a palette PNG is converted and predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "palette.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(30 * 40) % 200).reshape(30, 40).astype(np.uint8)).convert("P").save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-rgba", "an RGBA PNG is predicted")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "rgba.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((30, 40, 4), 120, np.uint8)).save(path)
    _predict_ok(ctx, v, path)


@case("bad images", "image-float-tiff", "a floating-point TIFF is refused (no 8-bit range), exit 2")
def _(ctx, v):
    from PIL import Image

    path = ctx.work / "files" / "float.tiff"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).random((30, 40)).astype(np.float32)).save(path)
    judge_error(v, _predict(ctx, path), 2, str(path), "floating-point")


@case("bad images", "image-truncated", "a PNG cut in its pixel data: one error naming it")
def _(ctx, v):
    path = _png(ctx.work / "files" / "cut.png", 40, 30, 8, 2, bytes(30 * (1 + 40 * 3)))
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-not-an-image", "a text file named .jpg: one error naming it")
def _(ctx, v):
    path = ctx.file("text.jpg", "hello\n")
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-empty", "a zero-byte PNG: one error naming it")
def _(ctx, v):
    path = ctx.file("empty.png", b"")
    judge_error(v, _predict(ctx, path), 2, str(path))


@case("bad images", "image-missing", "an image that does not exist")
def _(ctx, v):
    judge_error(v, _predict(ctx, ctx.work / "files" / "nope.png"), 2, "nope.png")


@case("bad images", "image-decompression-bomb",
      "a PNG header of 40,000 x 40,000 pixels: refused at once, one error")
def _(ctx, v):
    path = _png(ctx.work / "files" / "bomb.png", 40_000, 40_000, 8, 2, b"")
    judge_error(v, _predict(ctx, path), 2, str(path))


# --- wrong checkpoints ----------------------------------------------------------------------------

@case("wrong checkpoints", "eval-other-spec", "eval demt with a baseline_mt checkpoint: one error (exit 2)")
def _(ctx, v):
    judge_error(v, ctx.cli("eval", "demt", "--checkpoint", str(ctx.reference())), 2, "")


@case("wrong checkpoints", "eval-missing-folder", "eval of a folder that does not exist")
def _(ctx, v):
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(ctx.work / "nope")), 2, "nope")


@case("wrong checkpoints", "eval-empty-folder", "eval of an empty folder")
def _(ctx, v):
    empty = ctx.work / "empty"
    empty.mkdir(exist_ok=True)
    judge_error(v, ctx.cli("eval", "baseline_mt", "--checkpoint", str(empty)), 2, str(empty))


@case("wrong checkpoints", "eval-file-not-folder", "eval --checkpoint pointing at model.safetensors")
def _(ctx, v):
    path = step_dir(ctx.reference(), 6) / "model.safetensors"
    done = ctx.cli("eval", "baseline_mt", "--checkpoint", str(path), "--max-batches", "1")
    if done.rc == 0:
        judge_ok(v, done, "evaluated")
    else:
        judge_error(v, done, 2, str(path))


@case("wrong checkpoints", "predict-other-spec", "predict with tpanet on a baseline_mt checkpoint: one error")
def _(ctx, v):
    image = ctx.work / "files" / "ok.png"
    _png(image, 40, 30, 8, 2, bytes(30 * (1 + 40 * 3)))
    judge_error(v, ctx.cli("predict", "tpanet", "--checkpoint", str(ctx.reference()), str(image),
                           "--out", str(ctx.work / "p")), 2, "")


@case("wrong checkpoints", "resume-changed-graph", "resume with dim=16 is refused naming the changed nodes")
def _(ctx, v):
    ctx.copy_of_reference("w1")
    done = ctx.train("w1", 8, "--resume", "--set", "dim=16")
    judge_error(v, done, 2, "graph changed", "out.")


@case("wrong checkpoints", "resume-changed-tasks", "resume with other tasks is refused")
def _(ctx, v):
    ctx.copy_of_reference("w2")
    argv = [a if a != "semseg,depth" else "semseg" for a in ctx.train_argv("w2", 8, "--resume")]
    judge_error(v, ctx.cli(*argv), 2, "cannot resume")


@case("wrong checkpoints", "resume-changed-lr-applied", "resume with optimizer.lr=0.5: applied and reported")
def _(ctx, v):
    ctx.copy_of_reference("w3")
    done = ctx.train("w3", 8, "--resume", "--set", "optimizer.lr=0.5")
    judge_ok(v, done, "applied from here on: optimizer.lr")
    meta = json.loads((step_dir(ctx.runs / "w3", 8) / "meta.json").read_text())
    v.need(meta["run_config"]["optimizer"]["lr"] == 0.5, "meta.json does not record lr 0.5")


@case("wrong checkpoints", "init-garbage-file", "train --init with a garbage file: one error naming it")
def _(ctx, v):
    path = ctx.file("garbage.pth", b"\0garbage" * 100)
    judge_error(v, ctx.train("w4", 2, "--init", str(path)), 2, str(path))


# --- bad dataset folders ---------------------------------------------------------------------------

def _nyud(ctx: Context, name: str, count: int = 3) -> Path:
    """A small NYUD-v2 folder in the layout of the multi-task repositories."""
    from PIL import Image

    base = ctx.work / name / "NYUD_MT"
    for d in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (base / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"{i:04d}" for i in range(1, count + 1)]
    for stem in names:
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(base / "images" / f"{stem}.jpg")
        Image.fromarray(rng.integers(0, 41, (24, 32), dtype=np.uint8)).save(base / "segmentation" / f"{stem}.png")
        np.save(base / "depth" / f"{stem}.npy", rng.uniform(0.5, 5, (24, 32)).astype(np.float32))
        normals = rng.normal(size=(24, 32, 3)).astype(np.float32)
        np.save(base / "normals" / f"{stem}.npy", normals / np.linalg.norm(normals, axis=2, keepdims=True))
        np.save(base / "edge" / f"{stem}.npy", (rng.random((24, 32)) > 0.9).astype(np.float32))
    (base / "gt_sets" / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (base / "gt_sets" / "val.txt").write_text(names[-1] + "\n")
    return base


def _nyud_train(ctx: Context, run: str, root: Path, *extra: str) -> Done:
    return ctx.cli("train", "baseline_mt", "--plain", "--tasks", "semseg:40,depth", "--input", "32x32",
                   "--set", "backbone=resnet18", "--set", "dim=8", "--set", "levels=[1, 2]",
                   "--set", "dataset.name=nyud", "--set", f"dataset.root={root}",
                   "--set", "training.batch_size=1", "--set", "training.eval_interval=0",
                   "--set", "training.checkpoint_interval=0", "--set", "training.augment=false",
                   "--iterations", "4", "--storage", str(ctx.runs), "--run-name", run, *extra)


@case("bad dataset folders", "dataset-root-missing", "dataset.root that does not exist: one error naming it")
def _(ctx, v):
    judge_error(v, _nyud_train(ctx, "b1", ctx.work / "nowhere"), 2, "nowhere")


@case("bad dataset folders", "dataset-root-empty", "an empty folder: one error saying what is missing")
def _(ctx, v):
    empty = ctx.work / "emptydata"
    empty.mkdir(exist_ok=True)
    judge_error(v, _nyud_train(ctx, "b2", empty), 2, str(empty))


@case("bad dataset folders", "dataset-root-is-a-file", "dataset.root naming a file")
def _(ctx, v):
    path = ctx.file("data.txt", "x")
    judge_error(v, _nyud_train(ctx, "b3", path), 2, str(path))


@case("bad dataset folders", "dataset-corrupt-image",
      "an unreadable image is named before step 1 (exit 2), with the way to skip it")
def _(ctx, v):
    base = _nyud(ctx, "data-b4")
    (base / "images" / "0002.jpg").write_bytes(b"not a jpeg")
    judge_error(v, _nyud_train(ctx, "b4", base.parent), 2, str(base / "images" / "0002.jpg"),
                "dataset.skip_bad_samples=true")


@case("bad dataset folders", "dataset-label-torn-mid-run",
      "a label that fails while training: one line naming it (exit 1)")
def _(ctx, v):
    base = _nyud(ctx, "data-b5")
    label = base / "segmentation" / "0002.png"
    data = label.read_bytes()
    label.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_error(v, _nyud_train(ctx, "b5", base.parent), 1, str(label), lines=1)


@case("bad dataset folders", "dataset-skip-bad-samples",
      "the same with dataset.skip_bad_samples=true: trains, counts what it skipped")
def _(ctx, v):
    base = _nyud(ctx, "data-b6")
    label = base / "segmentation" / "0002.png"
    data = label.read_bytes()
    label.write_bytes(data[:data.index(b"IDAT") + 12])
    judge_ok(v, _nyud_train(ctx, "b6", base.parent, "--set", "dataset.skip_bad_samples=true"),
             "unreadable sample")


@case("bad dataset folders", "dataset-missing-split", "gt_sets/train.txt missing: one error naming it")
def _(ctx, v):
    base = _nyud(ctx, "data-b7")
    (base / "gt_sets" / "train.txt").unlink()
    judge_error(v, _nyud_train(ctx, "b7", base.parent), 2, "train")


@case("bad dataset folders", "dataset-missing-file", "a listed sample without its depth file")
def _(ctx, v):
    base = _nyud(ctx, "data-b8")
    (base / "depth" / "0001.npy").unlink()
    judge_error(v, _nyud_train(ctx, "b8", base.parent), 2, "0001")


@case("bad dataset folders", "dataset-pascal-missing", "dataset.name=pascal without its folder")
def _(ctx, v):
    judge_error(v, ctx.cli("train", "baseline_mt", "--plain", "--tasks", "pascal",
                           "--set", "dataset.name=pascal", "--set", f"dataset.root={ctx.work / 'nop'}"),
                2, "nop")
