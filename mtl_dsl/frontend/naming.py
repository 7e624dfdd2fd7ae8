"""Node names: every graph node gets a unique dotted name, which is also its module path in the
compiled model and the prefix of its weights' names (``d.semseg.conv.weight``).

A name comes from what the spec assigns (``d[t] = ...`` -> ``d.semseg``; a name bound in a loop
gets the loop value appended; a block inlined into ``h[t]`` prefixes its own names with
``h.semseg.``); a call nested in another call's arguments is named after the enclosing node
(``x_upsample_concat``). Rebinding a name gives ``x_2``, ``x_3``, ... No node's path may be a
prefix of another's (a module cannot be both a leaf and a folder), and no node may be named after
an attribute every torch module has.
"""
from __future__ import annotations

import keyword

from ..errors import Diagnostics, Located
from .values import Poison

MAX_NODES = 20_000

# Attributes of every torch module (and of the compiled model): a node may not be named after one.
MODULE_ATTRIBUTES = {
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward",
    "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "ipu",
    "load_state_dict", "modules", "mtia", "named_buffers", "named_children", "named_modules",
    "named_parameters", "parameters", "register_backward_hook", "register_buffer",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "smart_apply", "state_dict", "to",
    "to_empty", "train", "training", "type", "xpu", "zero_grad", "graph", "code", "recompile",
    "print_readable", "to_folder", "meta", "ir", "profile", "idle_parameters", "output_names",
    "checked", "input_size", "summary",
}


class NodeNames:
    """The names given so far in one compilation."""

    def __init__(self, sink: Diagnostics):
        self.sink = sink
        self.names: set[str] = set()
        self.prefixes: set[str] = set()  # every proper dotted prefix of a node name
        self.current_target: str | None = None  # the node whose arguments are being evaluated

    def unique(self, name: str, loc: Located) -> str:
        """``name``, or the first free variant of it (``x_2``); Poison if none can be."""
        first = name.split(".")[0]
        if first in MODULE_ATTRIBUTES or keyword.iskeyword(first):
            self.sink.error(loc, f"'{first}' cannot name a node: it is an attribute of every "
                                 f"torch module", "pick another name")
            raise Poison()
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
