"""How the official code names the tensors of a block's module, where that differs from ours.

A block declares this next to its shape rule (``Block.official_layout(call)``), without torch: a
tuple of ``Alias`` entries, each pairing a name (or a name prefix) in the official module's
layout, relative to the block's module, with the name(s) our module gives the same tensor. The
spec's ``weights`` maps say which official prefix is which node; the block says what is
intrinsic to its module:

* a rename: DeMT's ``DefMixer`` calls its channel-mixing conv ``0``, ours ``channel_mix.0``;
* a split: ``nn.MultiheadAttention`` stores the query, key and value projections as one
  ``in_proj_weight`` (3D x D, in the order q, k, v), ours as ``q_proj`` / ``k_proj`` / ``v_proj``;
* a permutation: mmsegmentation's Swin merges 2x2 patches with ``nn.Unfold`` (channel-major
  order), timm's in the order of the original Swin code, so the merging LayerNorm and Linear see
  their input channels in another order;
* a tensor the official module holds that ours does not need (DeMT's ``offset`` buffer, filled
  from the kernel size and never read; the index table of mmseg's window attention, which timm
  recomputes), with the reason.

Patterns are dotted names matched as a prefix, component by component; ``{n}`` matches one
integer component and the templates of ``ours`` may use ``{n}``, ``{n+1}`` or ``{n-1}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COPY = "copy"  # the official tensor is ours
SPLIT = "split"  # the official tensor is ours concatenated along dim 0, in the order of ``ours``
UNFOLD_ORDER = "unfold_order"  # the last dim is 4 x C in nn.Unfold's order; ours in Swin's
OPS = (COPY, SPLIT, UNFOLD_ORDER)

_CAPTURE = re.compile(r"^\{([A-Za-z_]\w*)\}$")
_TEMPLATE = re.compile(r"\{([A-Za-z_]\w*)([+-]\d+)?\}")


@dataclass(frozen=True)
class Alias:
    """The official name ``official`` (relative to the block's module) is our ``ours``."""

    official: str
    ours: tuple[str, ...] = ()  # () : the official tensors under this name are not used
    op: str = COPY
    reason: str = ""  # why unused (when ``ours`` is empty), or why ``optional``
    # The official module holds the tensor only in some states (ATRC's search blocks store
    # ``fixed_weights`` once frozen): when a file lacks it, ours keeps its value, which means the
    # same ("not frozen"), instead of counting as a tensor that got no value.
    optional: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown weight op '{self.op}'")
        if not self.ours and not self.reason:
            raise ValueError(f"alias '{self.official}': an unused name needs a reason")
        if self.op == SPLIT and len(self.ours) < 2:
            raise ValueError(f"alias '{self.official}': a split needs two or more names")
        if self.op != SPLIT and len(self.ours) > 1:
            raise ValueError(f"alias '{self.official}': several names need op 'split'")
        if self.optional and (not self.ours or "{" in "".join(self.ours) or not self.reason):
            raise ValueError(f"alias '{self.official}': an optional name is a plain name of ours "
                             f"with a reason")

    @property
    def unused(self) -> bool:
        return not self.ours

    def match(self, name: str) -> list[str] | None:
        """Our names for the official ``name`` (relative to the block), [] if unused, None if
        this alias does not cover ``name``."""
        pattern = self.official.split(".") if self.official else []
        parts = name.split(".") if name else []
        if len(parts) < len(pattern):
            return None
        captures: dict[str, int] = {}
        for want, got in zip(pattern, parts):
            capture = _CAPTURE.match(want)
            if capture is not None:
                if not got.isdigit():
                    return None
                captures[capture.group(1)] = int(got)
            elif want != got:
                return None
        if self.unused:
            return []
        rest = parts[len(pattern):]
        return [join(_fill(t, captures), *rest) for t in self.ours]


def _fill(template: str, captures: dict[str, int]) -> str:
    def value(m: re.Match) -> str:
        if m.group(1) not in captures:
            raise ValueError(f"template '{template}' uses '{{{m.group(1)}}}', which its "
                             f"pattern does not capture")
        return str(captures[m.group(1)] + int(m.group(2) or 0))

    return _TEMPLATE.sub(value, template)


def join(*parts: str) -> str:
    """Dotted join that skips empty parts."""
    return ".".join(p for p in parts if p)


def under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or inside it (component-wise)."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def resolve(aliases: tuple[Alias, ...], name: str) -> tuple[Alias, list[str]] | None:
    """The first alias covering ``name`` and our names for it."""
    for alias in aliases:
        found = alias.match(name)
        if found is not None:
            return alias, found
    return None


# -- aliases several blocks share ------------------------------------------------------------------

def multihead_attention(official: str, ours: str = "") -> tuple[Alias, ...]:
    """``nn.MultiheadAttention`` named ``official`` in the official module: its packed
    ``in_proj_weight`` / ``in_proj_bias`` are our ``q_proj`` / ``k_proj`` / ``v_proj`` (in that
    order); ``out_proj`` is ours."""
    ours = ours or official
    return (
        Alias(join(official, "in_proj_weight"), tuple(join(ours, f"{p}_proj.weight") for p in "qkv"),
              SPLIT),
        Alias(join(official, "in_proj_bias"), tuple(join(ours, f"{p}_proj.bias") for p in "qkv"),
              SPLIT),
        Alias(join(official, "out_proj"), (join(ours, "out_proj"),)),
    )


def renames(pairs: dict[str, str]) -> tuple[Alias, ...]:
    return tuple(Alias(official, (ours,)) for official, ours in pairs.items())
