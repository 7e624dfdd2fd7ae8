"""Blocks of the atrc family: ATRC's Context Pooling blocks, its per-target fusion, and the
gradient stop its auxiliary heads sit behind (Bruggemann et al., ICCV 2021; official code:
github.com/brdav/atrc, src/model/heads/relationalcontext.py)."""
from __future__ import annotations

from ..types import FeatureMap, TaskMap
from ..weights.layout import Alias, renames
from .registry import Block, Call, Fusion, Input, Param, register

CONTEXT_KINDS = ("global", "local", "t_label", "s_label")  # the order of the genotype codes 1..4
POOL_KINDS = (*CONTEXT_KINDS, "search")
SEARCH_DEFAULTS = {"tau": (1.0, 0.05), "entropy_weight": (-0.02, 0.06), "freeze_gap": 0.3,
                   "arch_lr": 5e-4, "grad_clip": 10.0}


@register
class ContextPool(Block):
    name = "context_pool"
    module = "mtl_dsl.modules.atrc.build_context"
    fusion = Fusion("mtl_dsl.modules.batched.atrc.context_pools")
    family = "atrc"
    doc = ("ATRC Context Pooling block: refines the target task's features with the source task's. "
           "kind global (linearised attention), local (window x window neighbourhood, zero padded), "
           "t_label / s_label (attention over label-region prototypes of the target / source task, "
           "from its auxiliary logits), or search (the supergraph mixture of all of them and none).")
    args = {
        "target": Input((FeatureMap,), "target task features F_t"),
        "source": Input((FeatureMap,), "source task features F_s"),
        "target_aux": Input((FeatureMap,), "target task's auxiliary logits (t_label, search)",
                            optional=True),
        "source_aux": Input((FeatureMap,), "source task's auxiliary logits (s_label, search off "
                            "the diagonal)", optional=True),
        "kind": Param(str, "global", "context type", choices=POOL_KINDS),
        "channels": Param(int, 0, "output channels (0: half the target channels, as ATRC)", min=0),
        "window": Param(int, 9, "local window size (odd)", min=1, max=31),
        "value_affine": Param(bool, None, "affine BatchNorm in the value projection "
                              "(default: true, false in the search supergraph as in the code)"),
        "pair": Param(list, None, "[target, source] task names (search: names the table entry, "
                      "no S-label candidate when they are equal)", item_type=str),
    }

    def _channels(self, call: Call) -> int:
        return call["channels"] or max(1, call.inputs["target"].channels // 2)

    def infer(self, call: Call) -> FeatureMap:
        target: FeatureMap = call.inputs["target"]
        source: FeatureMap = call.inputs["source"]
        kind = call["kind"]
        size = call.input_size
        from ..types import same_dim

        if not (same_dim(target.h, source.h, size) and same_dim(target.w, source.w, size)):
            raise call.fail(f"target {target.shape_str()} and source {source.shape_str()} must have "
                            f"the same spatial size", "target", "source")
        if call["window"] % 2 == 0:
            raise call.fail(f"window must be odd, got {call['window']}")
        needed = {"t_label": ["target_aux"], "s_label": ["source_aux"]}.get(kind, [])
        if kind == "search":
            pair = call["pair"]
            if not pair or len(pair) != 2:
                raise call.fail("kind \"search\" needs pair = [target, source] (the task names)")
            needed = ["target_aux"] if pair[0] == pair[1] else ["target_aux", "source_aux"]
        for name in needed:
            aux = call.inputs.get(name)
            if aux is None:
                raise call.fail(f"context kind \"{kind}\" needs {name} (the auxiliary logits that "
                                f"define its label regions)")
            if not (same_dim(aux.h, source.h, size) and same_dim(aux.w, source.w, size)):
                raise call.fail(f"{name} {aux.shape_str()} must have the spatial size of the "
                                f"features {source.shape_str()}", name, "source")
        return FeatureMap(channels=self._channels(call), h=target.h, w=target.w)

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # brdav/atrc src/model/heads/attention.py: the CP blocks' query_project, key_project,
        # value_project. The search supergraph (relationalcontextsearch.py, ConvexCombination):
        # arch_param, fixed_weights (stored once frozen) and op_list in the order global, local,
        # T-label and, off the diagonal, S-label.
        projections = {"query_project": "query", "key_project": "key",
                       "value_project": "value"}
        if call["kind"] != "search":
            return renames(projections)
        pair = call["pair"] or ["", ""]
        kinds = [k for k in CONTEXT_KINDS if not (k == "s_label" and pair[0] == pair[1])]
        pairs = {"arch_param": "arch_logits"}
        for index, kind in enumerate(kinds):
            pairs.update({f"op_list.{index}.{theirs}": f"candidates.{kind}.{ours}"
                          for theirs, ours in projections.items()})
        return (Alias("fixed_weights", ("frozen",), optional=True,
                      reason="the official block stores its one-hot choice only once frozen"),
                *renames(pairs))

    def unfusable(self, call: Call) -> str | None:
        if call["kind"] == "search":
            return "the search supergraph's blocks have no batched implementation"
        return None

    def draws_random(self, call: Call) -> bool:
        return call["kind"] == "search"  # Gumbel noise in training


@register
class ContextFusion(Block):
    name = "context_fusion"
    module = "mtl_dsl.modules.atrc.ContextFusion"
    fusion = Fusion("mtl_dsl.modules.batched.atrc.context_fusions")
    family = "atrc"
    doc = ("ATRC per-target fusion: concat the target's CP outputs -> 1x1 Conv-BN (zero-initialised "
           "BN) -> concat with the features -> 1x1 Conv-BN-ReLU -> Dropout2d. Without contexts "
           "(a target with no source): 1x1 Conv-BN-ReLU -> Dropout2d.")
    args = {
        "x": Input((FeatureMap,), "target task features F_t"),
        "contexts": Input((TaskMap,), "the target's CP outputs {source: map}", optional=True),
        "dropout": Param(float, 0.05, "Dropout2d probability (0 in the search supergraph)",
                         min=0.0, max=1.0),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        self._context_channels(call)
        return FeatureMap(channels=x.channels, h=x.h, w=x.w)

    def _context_channels(self, call: Call) -> int:
        from ..types import same_dim

        x: FeatureMap = call.inputs["x"]
        contexts: TaskMap | None = call.inputs.get("contexts")
        if contexts is None:
            return 0
        if not contexts.items:
            raise call.fail("contexts is empty; omit it for a target without sources", "contexts")
        total = 0
        for key, value in contexts.items.items():
            if not isinstance(value, FeatureMap):
                raise call.fail(f"contexts['{key}'] must be a feature map, got {value.shape_str()}",
                                "contexts")
            if not (same_dim(value.h, x.h, call.input_size)
                    and same_dim(value.w, x.w, call.input_size)):
                raise call.fail(f"contexts['{key}'] {value.shape_str()} and x {x.shape_str()} must "
                                f"have the same spatial size", "contexts", "x")
            total += value.channels
        return total

    def extra_args(self, call: Call) -> dict:
        return {"context_channels": self._context_channels(call)}

    def official_layout(self, call: Call) -> tuple[Alias, ...]:
        # ATRCModule.bottleneck[t] = Sequential(ConvBNReLU, Dropout2d); the search supergraph's
        # is the ConvBNReLU alone (no dropout).
        return renames({"bottleneck.0": "bottleneck"}) if call["dropout"] > 0 else ()

    def draws_random(self, call: Call) -> bool:
        return call["dropout"] > 0


@register
class LabelHead(Block):
    name = "label_head"
    module = "mtl_dsl.modules.atrc.LabelHead"
    fusion = Fusion("mtl_dsl.modules.batched.heads.conv_bn_acts", vary=("task",))
    family = "atrc"
    doc = ("ATRC auxiliary head: 1x1 Conv-BN-ReLU (width = input channels unless given) -> 1x1 Conv "
           "to the task's auxiliary channels (its label regions: classes, 40 depth bins, 40 normal "
           "clusters, 2 edge classes). Its logits feed the label contexts and get their own loss.")
    args = {
        "x": Input((FeatureMap,), "features (ATRC: the detached aggregated backbone features)"),
        "task": Param("task", doc="the task whose label regions it predicts"),
        "width": Param(int, 0, "hidden width (0: the input channels)", min=0),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        if call["task"] not in call.task_names:
            raise call.fail(f"unknown task '{call['task']}' (tasks: {', '.join(call.task_names)})")
        return FeatureMap(channels=call.task(call["task"]).aux_channels, h=x.h, w=x.w)
