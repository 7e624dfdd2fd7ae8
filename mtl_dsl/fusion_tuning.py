"""Fusion tuning: keep the fusion groups that are faster batched on this device, measured.

Whether T calls run faster as one batched computation than one by one depends on more than the
graph: the device, the batch, autocast, TF32, and the kernel a library picks for a shape. On an
H200 (``benchmarks/fusion_groups.py --device cuda``) most groups gain (1.2-2.5x) but some lose
(0.84-0.92x for small per-task convolutions); with TF32 off, cuDNN's heuristics picked a kernel for
the baseline's stacked head convolution that made the whole step 5x slower. No rule fixed in
advance holds on every device and setting, so this times each group as the model runs it and
keeps the groups that pay, the way ``cudnn.benchmark`` picks convolution kernels.

How: one unfused forward captures each group's inputs; then, per group, forward + backward of the
T calls one by one and of the batched call alternate ``reps`` times (after one warm-up each) and
the fastest of each decides. Both forms compute the same thing (``mtl_dsl.passes.fuse``), so the
choice changes speed only. The model is left as it was found: buffers (BatchNorm statistics),
gradients and the random number generators' states are restored.

The training loop tunes on a GPU before its first step (``mtl_dsl.runtime.loop``); on a CPU the
fixed policy of ``mtl_dsl.modules.batched.layers.grouping_pays`` holds (there is no launch to save,
and timing noise on a shared CPU is as large as the differences).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

SLOWER = "measured slower batched than one by one on this device"


@dataclass(frozen=True)
class GroupTiming:
    """One group's fastest forward + backward, one by one and batched (seconds)."""

    group: str  # the group as ``render`` describes it
    calls: int
    separate_s: float
    batched_s: float

    @property
    def pays(self) -> bool:
        return self.batched_s < self.separate_s


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.is_floating_point())
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def capture_inputs(model, images: torch.Tensor, names: list[str]) -> dict[str, tuple]:
    """Each named node's positional inputs in one unfused forward (detached leaves)."""
    seen: dict[str, tuple] = {}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: seen.setdefault(name, _detached(args))) for name in names]
    try:
        with model.fusion_off():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    run_with_backward(run)
    _sync(device)
    return time.perf_counter() - t0


def fastest_each_way(model, separate, batched, reps: int, device: torch.device) -> tuple[float, float]:
    """The fastest of ``reps`` runs each way, alternated (after one warm-up each)."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for run in (separate, batched):
        _timed(run, device)
    for i in range(reps):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            times[on].append(_timed(batched if on else separate, device))
            model.zero_grad(set_to_none=True)
    return min(times[False]), min(times[True])


def group_runs(model, images: torch.Tensor) -> list[tuple[Any, Callable[[], Any], Callable[[], Any]]]:
    """Per group of the model's full fusion plan: the group, and two functions that run its calls
    on the inputs captured from one unfused forward of ``images``, one by one and batched."""
    from .blocks import REGISTRY
    from .blocks.construct import resolve_module

    plan = model.full_fusion
    inputs = capture_inputs(model, images, [n for g in plan.groups for n in g.nodes])
    runs = []
    for group in plan.groups:
        block = REGISTRY[group.block]
        modules = tuple(model.get_submodule(n) for n in group.nodes)
        shared = tuple(name in group.shared for name in block.inputs())
        per_input = list(zip(*(inputs[n] for n in group.nodes)))
        args = [calls[0] if s else list(calls) for s, calls in zip(shared, per_input)]
        batched = resolve_module(group.batched)

        def separate(modules=modules, group=group):
            return [m(*inputs[n]) for m, n in zip(modules, group.nodes)]

        def together(modules=modules, shared=shared, args=args, batched=batched):
            return batched(modules, shared, *args)

        runs.append((group, separate, together))
    return runs


def run_with_backward(run: Callable[[], Any]) -> None:
    """``run``, then backward from the mean of each of its outputs that needs a gradient."""
    outputs = [o for o in _tensors(run()) if o.requires_grad]
    if outputs:
        sum(o.float().mean() for o in outputs).backward()


def time_groups(model, images: torch.Tensor, reps: int = 3) -> list[GroupTiming]:
    """Each group of the model's full fusion plan timed one by one and batched, on the device of
    ``images`` (under whatever autocast the caller set)."""
    return [GroupTiming(group.describe().split(":")[0], len(group.nodes),
                        *fastest_each_way(model, separate, together, reps, images.device))
            for group, separate, together in group_runs(model, images)]


@contextmanager
def _state_kept(model) -> Iterator[None]:
    """Buffers, gradients and the random number generators as they were before."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        for n, p in model.named_parameters():
            p.grad = grads[n]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def tune_fusion(model, images: torch.Tensor, reps: int = 3,
                decide: Callable[[list[GroupTiming]], set[int]] | None = None) -> list[GroupTiming]:
    """Time every group of ``model`` on ``images`` and keep batched those that pay (``decide``
    maps the timings to the indices to keep; default: those faster batched). The model keeps its
    mode, parameters, buffers and gradients; returns the timings."""
    if not model.full_fusion.groups:
        return []
    with _state_kept(model):
        timings = time_groups(model, images, reps)
    keep = decide(timings) if decide else {i for i, t in enumerate(timings) if t.pays}
    model.keep_fusion_groups(keep, SLOWER)
    return timings


def describe(timings: list[GroupTiming], kept: int) -> str:
    """One line for the run's log: how many groups stay batched, and the ones that do not."""
    slower = [t.group for t in timings if not t.pays]
    text = f"fusion tuned on this device: {kept} of {len(timings)} groups batched"
    return text + (f" ({len(slower)} faster one by one: {'; '.join(slower)})" if slower else "")
