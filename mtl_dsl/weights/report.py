"""What a conversion did, for people: every official tensor used once or listed with the reason
it is not, the model tensors that kept their initialisation, and per node whether it was loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .files import OfficialWeights
from .layout import SPLIT, UNFOLD_ORDER, under
from .plan import Plan, listing


@dataclass
class NodeStatus:
    loaded: list[str]  # every tensor of the node got a value from the file
    partial: list[str]  # some did
    kept: list[str]  # none did: the node keeps its initialisation


def node_status(plan: Plan, nodes: Sequence[str], model_keys: Sequence[str]) -> NodeStatus:
    loaded = plan.loaded
    status = NodeStatus([], [], [])
    for node in nodes:
        keys = [k for k in model_keys if under(k, node)]
        if not keys:
            continue  # a node without tensors (upsample_concat, select, ...)
        got = sum(k in loaded for k in keys)
        (status.loaded if got == len(keys) else status.partial if got else status.kept).append(node)
    return status


def describe_file(weights: OfficialWeights) -> str:
    extras = []
    if weights.wrapper:
        extras.append(f"{weights.wrapper} checkpoint")
    if weights.stripped:
        extras.append(f"prefix '{weights.stripped}' removed")
    extra = f"; {', '.join(extras)}" if extras else ""
    return (f"{weights.path} ({weights.format}, {'/'.join(weights.dtypes())}, "
            f"{len(weights.tensors):,} tensors{extra})")


def render(plan: Plan, weights: OfficialWeights, spec: str, status: NodeStatus,
           part: str | None = None) -> str:
    lines = [f"official weights: {describe_file(weights)}",
             f"map '{plan.map_name}' of {spec}" + (f", the part imported as '{part}'" if part else "")]
    splits = sum(t.op == SPLIT for t in plan.transfers)
    permuted = sum(t.op == UNFOLD_ORDER for t in plan.transfers)
    how = []
    if splits:
        how.append(f"{splits} split into q/k/v or stacked parts")
    if permuted:
        how.append(f"{permuted} patch-merging tensors reordered from nn.Unfold's channel order")
    lines.append(f"  used:   {len(plan.transfers):>6,} official tensors, each once -> "
                 f"{len(plan.loaded):,} model tensors" + (f" ({'; '.join(how)})" if how else ""))
    lines.append(f"  unused: {len(plan.unused):>6,} official tensors" + (":" if plan.unused else ""))
    by_reason: dict[str, list[str]] = {}
    for key, reason in plan.unused.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        lines.append(f"      {len(keys)} x {reason}: {listing(keys, 4)}")
    if weights.set_aside:
        by_reason = {}
        for key, reason in weights.set_aside.items():
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"  set aside: {len(keys)} entries, {reason}: {listing(keys, 4)}")
    if part is not None and plan.outside:
        lines.append(f"  not part of '{part}': {len(plan.outside):,} official tensors "
                     f"({listing(plan.outside, 4)})")
    if plan.missing:
        lines.append(f"  kept their initialisation: {len(plan.missing):,} model tensors "
                     f"({listing(plan.missing, 4)})")
    else:
        lines.append("  every model tensor got a value" if part is None else
                     f"  every tensor of the part '{part}' got a value")
    lines.append(f"  nodes loaded ({len(status.loaded)}): {', '.join(status.loaded) or 'none'}")
    if status.partial:
        lines.append(f"  nodes partly loaded ({len(status.partial)}): {', '.join(status.partial)}")
    if status.kept:
        lines.append(f"  nodes that kept their initialisation ({len(status.kept)}): "
                     f"{', '.join(status.kept)}")
    return "\n".join(lines)


def correspondence(plan: Plan) -> dict:
    """The key correspondence for meta.json: every official key with what it became."""
    return {
        "map": plan.map_name,
        "transfers": [{"official": t.official, "model": list(t.ours), "op": t.op,
                       "entry": f"{t.entry.loc.file}:{t.entry.loc.line}"} for t in plan.transfers],
        "unused": dict(plan.unused),
        "kept_initialisation": list(plan.missing),
    }
