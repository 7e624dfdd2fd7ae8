"""Node names: every graph node gets a unique dotted name, which is also its module path in the
compiled model and the prefix of its weights' names (``d.semseg.conv.weight``).

A name comes from what the spec assigns (``d[t] = ...`` -> ``d.semseg``; a name bound in a loop
gets the loop value appended; a block inlined into ``h[t]`` prefixes its own names with
``h.semseg.``); a call nested in another call's arguments is named after the enclosing node
(``x_upsample_concat``). Rebinding a name gives ``x_2``, ``x_3``, ... No node's path may be a
prefix of another's (a module cannot be both a leaf and a folder), and no part of a name may be
an attribute the compiled model or a torch module already has, or a Python keyword
(``reserved``, derived from torch).
"""
from __future__ import annotations

from ..errors import Diagnostics, Located
from .reserved import why_reserved
from .values import Poison

MAX_NODES = 20_000

class NodeNames:
    """The names given so far in one compilation."""

    def __init__(self, sink: Diagnostics):
        self.sink = sink
        self.names: set[str] = set()
        self.prefixes: set[str] = set()  # every proper dotted prefix of a node name
        self.current_target: str | None = None  # the node whose arguments are being evaluated

    def unique(self, name: str, loc: Located) -> str:
        """``name``, or the first free variant of it (``x_2``); Poison if none can be."""
        self.check(name, loc)
        if name not in self.names and not self._prefix_clash(name):
            return name
        if self._prefix_clash(name):
            # `y` is a node and a loop rebinds it as `y.0`: flatten to `y_0`.
            name = name.replace(".", "_")
            if name not in self.names and not self._prefix_clash(name):
                return name
        for i in range(2, MAX_NODES + 2):
            candidate = f"{name}_{i}"
            if candidate not in self.names and not self._prefix_clash(candidate):
                return candidate
        self.sink.error(loc, f"cannot find a free node name for '{name}'")
        raise Poison()

    def check(self, name: str, loc: Located) -> None:
        """Poison (and an error) when a part of the dotted ``name`` cannot name a module."""
        for i, part in enumerate(name.split(".")):
            why = why_reserved(part, first=i == 0)
            if why:
                where = "" if i == 0 else f" (in '{name}')"
                self.sink.error(loc, f"'{part}' cannot name a node{where}: {why}",
                                "pick another name")
                raise Poison()

    def add(self, name: str) -> None:
        self.names.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            self.prefixes.add(".".join(parts[:i]))

    def anonymous(self, prefix: str, block: str) -> str:
        """A call nested in another call's arguments is named after the enclosing node."""
        if self.current_target is None:  # e.g. `return upsample_concat(feats)`
            return prefix + block
        return self.current_target + "_" + block

    def _prefix_clash(self, name: str) -> bool:
        """A node's module path may not be a prefix of another's (x and x.y)."""
        parts = name.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in self.names:
                return True
        return name in self.prefixes
