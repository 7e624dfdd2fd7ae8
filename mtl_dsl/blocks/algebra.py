"""Blocks of the algebra family: arithmetic on graph values, element-wise functions, softmax,
global pooling, learned scales, and the reductions over collections that the language writes as
``sum(...)``, ``mean(...)``, ``max(...)``, ``min(...)``.

The spec writes most of these as operators: ``a * b`` is a ``mul`` node, ``0.5 * x`` a ``mul``
node with a constant, ``sum(m[s] for s in tasks if s != t)`` a ``sum`` node over the collection
the generator builds (``frontend/algebra.py``). Shapes broadcast only where a design means it:

* channels: equal, or one side has 1 channel (a spatial gate ``[B, 1, H, W]``);
* space: equal, or one side is 1x1 (a global gate ``[B, C, 1, 1]`` from ``global_pool``): a map
  whose size is 1 only because the input is small (``H/32`` at a 32-pixel input) is not 1x1;
* token sequences combine with token sequences on the same grid (channels as above), never with
  feature maps.

Every other pair is a shape error naming both shapes and the nodes they came from. The modules
(``mtl_dsl/modules/algebra.py``) are the torch operations a hand-written model calls, one per
node: ``torch.mul``, a fold of ``torch.addcmul`` for a weighted sum, ``softmax``, ``amax``.
"""
from __future__ import annotations

from typing import Any

from ..types import Dim, FeatureMap, TaskMap, Tokens, kind_name
from .registry import Block, Call, Input, Param, register

FAMILY = "algebra"
VALUE_KINDS = (FeatureMap, Tokens)
VERBS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "sum": "sum",
         "mean": "average", "max": "take the maximum of", "min": "take the minimum of"}


class Mismatch(Exception):
    """Two shapes that do not broadcast, with the reason and a hint."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def is_one(d: Dim) -> bool:
    """A size that is 1 whatever the input size (global pooling's), not one that happens to be."""
    return d.is_const and int(d.base) == 1


def _size_text(t: Any, size: tuple[int, int]) -> str:
    return f"{t.h.eval(*size)}x{t.w.eval(*size)}"


def broadcast(a: Any, b: Any, size: tuple[int, int]) -> Any:
    """The type of ``a (op) b`` under the language's broadcasting rules, or ``Mismatch``."""
    for t in (a, b):
        if not isinstance(t, VALUE_KINDS):
            hint = {TaskMap: "index the collection (d[t]) or reduce it (sum(d), mean(d))",
                    }.get(type(t), "operators take feature maps and token sequences")
            raise Mismatch(f"a {kind_name(t)} is not a feature map or a token sequence", hint)
    if type(a) is not type(b):
        raise Mismatch("a feature map and a token sequence do not combine",
                       "turn one into the other's kind: tokens(x) or to_map(x)")
    problems: list[str] = []
    hints: list[str] = []
    if a.channels != b.channels and 1 not in (a.channels, b.channels):
        problems.append(f"{a.channels} channels against {b.channels} (channels broadcast only "
                        f"when one side has 1)")
        hints.append("make the widths equal, or one of them 1")
    channels = b.channels if a.channels == 1 else a.channels
    if isinstance(a, Tokens):
        grid_a = (a.groups, a.h.eval(*size), a.w.eval(*size))
        grid_b = (b.groups, b.h.eval(*size), b.w.eval(*size))
        if grid_a != grid_b:
            problems.append(f"the token grids differ ({a.shape_str()} against {b.shape_str()} "
                            f"at input size {size[0]}x{size[1]})")
        if problems:
            raise Mismatch("; ".join(problems), "; ".join(hints))
        return a.model_copy(update={"channels": channels})
    a_one, b_one = is_one(a.h) and is_one(a.w), is_one(b.h) and is_one(b.w)
    h, w = (b.h, b.w) if a_one and not b_one else (a.h, a.w)
    same = (a.h.eval(*size), a.w.eval(*size)) == (b.h.eval(*size), b.w.eval(*size))
    if not (a_one or b_one or same):
        accidental = any(_size_text(t, size) == "1x1" for t in (a, b))
        problems.append(f"sizes {a.h}x{a.w} and {b.h}x{b.w} differ ({_size_text(a, size)} "
                        f"against {_size_text(b, size)} at input size {size[0]}x{size[1]}; a "
                        f"map broadcasts over space only when it is 1x1)")
        hints.append("a map that is 1x1 only at this input size does not broadcast (it would "
                     "not at another size); take global_pool(x) for a global value"
                     if accidental else "resize one to the other (resize(x, like = y)), or pool "
                                        "one to 1x1 (global_pool(x))")
    if problems:
        raise Mismatch("; ".join(problems), "; ".join(hints))
    return FeatureMap(channels=channels, h=h, w=w)


_VALUE = (FeatureMap, Tokens)


class _Arithmetic(Block):
    """``left (op) right``; one side may be the constant ``const`` instead (``0.5 * x``,
    ``1 - x``)."""

    family = FAMILY
    args = {
        "left": Input(_VALUE, "left operand (omitted: `const` is the left operand)", optional=True),
        "right": Input(_VALUE, "right operand (omitted: `const` is the right operand)",
                       optional=True),
        "const": Param(float, None, "the constant operand, when one side is a number"),
    }

    def operands(self, call: Call) -> list[tuple[str, Any]]:
        given = [(k, call.inputs[k]) for k in ("left", "right") if call.inputs.get(k) is not None]
        constant = call["const"] is not None
        if len(given) + constant != 2:
            raise call.fail(f"'{self.name}' takes two operands: left and right, or one of them "
                            f"and const", *[k for k, _ in given])
        return given

    def infer(self, call: Call) -> Any:
        given = self.operands(call)
        if len(given) == 1:
            t = given[0][1]
            if not isinstance(t, VALUE_KINDS):
                raise call.fail(f"cannot {VERBS[self.name]} a {kind_name(t)} and a number",
                                given[0][0])
            return t
        (na, ta), (nb, tb) = given
        try:
            return broadcast(ta, tb, call.input_size)
        except Mismatch as e:
            raise call.fail(f"cannot {VERBS[self.name]} {ta.shape_str()} and {tb.shape_str()}: "
                            f"{e.reason}", na, nb, hint=e.hint) from None


@register
class Add(_Arithmetic):
    name = "add"
    module = "mtl_dsl.modules.algebra.Add"
    doc = ("left + right (a residual; the spec writes `a + b`). Shapes broadcast: channels 1 "
           "against C, a 1x1 map against any size. `third` adds a third value.")
    args = {"left": _Arithmetic.args["left"], "right": _Arithmetic.args["right"],
            "third": Input(_VALUE, "a third value to add", optional=True),
            "const": _Arithmetic.args["const"]}

    def infer(self, call: Call) -> Any:
        out = super().infer(call)
        third = call.inputs.get("third")
        if third is None:
            return out
        try:
            return broadcast(out, third, call.input_size)
        except Mismatch as e:
            raise call.fail(f"cannot add {out.shape_str()} and {third.shape_str()}: {e.reason}",
                            "left", "third", hint=e.hint) from None


@register
class Sub(_Arithmetic):
    name = "sub"
    module = "mtl_dsl.modules.algebra.Sub"
    doc = "left - right (the spec writes `a - b`, `1 - x`). Broadcasting as for add."


@register
class Mul(_Arithmetic):
    name = "mul"
    module = "mtl_dsl.modules.algebra.Mul"
    doc = ("left * right (the spec writes `gate * x`, `0.5 * x`): a gate [B, 1, H, W] or "
           "[B, C, 1, 1] broadcasts over the map it multiplies.")


@register
class Div(_Arithmetic):
    name = "div"
    module = "mtl_dsl.modules.algebra.Div"
    doc = "left / right (the spec writes `x / 4`, `a / b`). Broadcasting as for add."


# -- element-wise functions -----------------------------------------------------------------------

class _Elementwise(Block):
    family = FAMILY
    args = {"x": Input(_VALUE, "a feature map or token sequence")}

    def infer(self, call: Call) -> Any:
        return call.inputs["x"]


@register
class Sigmoid(_Elementwise):
    name = "sigmoid"
    module = "torch.nn.Sigmoid"
    doc = "1 / (1 + exp(-x)), element-wise: a gate in (0, 1)."


@register
class Tanh(_Elementwise):
    name = "tanh"
    module = "torch.nn.Tanh"
    doc = "tanh(x), element-wise."


@register
class Relu(_Elementwise):
    name = "relu"
    module = "torch.nn.ReLU"
    doc = "max(x, 0), element-wise."


@register
class Gelu(_Elementwise):
    name = "gelu"
    module = "torch.nn.GELU"
    doc = "GELU (exact, erf form), element-wise."


@register
class Softmax(Block):
    name = "softmax"
    family = FAMILY
    module = "mtl_dsl.modules.algebra.Softmax"
    doc = ("Softmax over the channels of every position (dim = \"channels\"), over the positions "
           "of every channel (\"space\": a map's h*w, a token sequence's tokens), or across the "
           "entries of a per-task collection at every element (\"tasks\": weights that sum to 1 "
           "over the tasks; the result is a collection with the same entries).")
    args = {
        "x": Input((FeatureMap, Tokens, TaskMap), "a map, tokens, or (dim = \"tasks\") a "
                                                  "per-task collection of equal shapes"),
        "dim": Param(str, "channels", "the axis the values sum to 1 over",
                     choices=("channels", "tasks", "space")),
    }

    def infer(self, call: Call) -> Any:
        x = call.inputs["x"]
        if call["dim"] != "tasks":
            if isinstance(x, TaskMap):
                raise call.fail(f"softmax over {call['dim']} takes one map; a per-task collection "
                                f"takes dim = \"tasks\"", "x")
            return x
        if not isinstance(x, TaskMap):
            raise call.fail("softmax over tasks takes a per-task collection (d, or "
                            "stack(x[s] for s in tasks))", "x")
        items = list(x.items.items())
        if not items:
            raise call.fail("softmax over an empty collection", "x")
        first_key, first = items[0]
        for key, t in items:
            if not isinstance(t, VALUE_KINDS):
                raise call.fail(f"entry '{key}' is a {kind_name(t)}, not a map or tokens",
                                f"x[{key}]")
            if type(t) is not type(first) or t.concrete(call.input_size) != \
                    first.concrete(call.input_size):
                raise call.fail(f"softmax over tasks needs entries of one shape: '{first_key}' is "
                                f"{first.shape_str()}, '{key}' is {t.shape_str()}",
                                f"x[{first_key}]", f"x[{key}]")
        return x


@register
class GlobalPool(Block):
    name = "global_pool"
    family = FAMILY
    module = "mtl_dsl.modules.algebra.GlobalPool"
    doc = ("The mean (mode = \"avg\") or maximum (\"max\") of every channel over space: "
           "[B, C, h, w] -> [B, C, 1, 1], the squeeze of an SE gate.")
    args = {
        "x": Input((FeatureMap,), "a feature map"),
        "mode": Param(str, "avg", "how a channel is pooled", choices=("avg", "max")),
    }

    def infer(self, call: Call) -> FeatureMap:
        x: FeatureMap = call.inputs["x"]
        return FeatureMap(channels=x.channels, h=Dim.of(1), w=Dim.of(1))


@register
class LearnedScale(Block):
    name = "learned_scale"
    family = FAMILY
    module = "mtl_dsl.modules.algebra.LearnedScale"
    doc = ("A learned value per channel, [B, channels, 1, 1] (the same for every image), "
           "initialised to `init`: the weights of a cross-stitch unit or a residual scale "
           "(`alpha * x`).")
    args = {
        "channels": Param(int, 1, "how many values (1: one scalar)", min=1),
        "init": Param(float, 1.0, "initial value"),
        "like": Input((FeatureMap, Tokens), "where the batch size comes from", default="images"),
    }

    def infer(self, call: Call) -> FeatureMap:
        return FeatureMap(channels=call["channels"], h=Dim.of(1), w=Dim.of(1))


# -- reductions -----------------------------------------------------------------------------------

class _Reduction(Block):
    """A reduction over the entries of a collection: what ``sum(...)`` etc. lower to."""

    family = FAMILY
    args = {
        "x": Input((TaskMap, FeatureMap, Tokens), "the terms: a per-task collection, a "
                                                  "generator's values, or the values given one "
                                                  "by one"),
    }

    def terms(self, call: Call) -> list[tuple[str, Any]]:
        x = call.inputs["x"]
        if not isinstance(x, TaskMap):
            raise call.fail(f"'{self.name}' of one {kind_name(x)} reduces nothing: it takes "
                            f"several values (a per-task collection, a generator, a, b, ...)", "x",
                            hint="over a map's positions: global_pool(x, mode = \"avg\" | "
                                 "\"max\")" if isinstance(x, FeatureMap) else "")
        items = list(x.items.items())
        if not items:
            raise call.fail(f"'{self.name}' of no values", "x")
        for key, t in items:
            if not isinstance(t, VALUE_KINDS):
                raise call.fail(f"cannot {VERBS[self.name]} a {kind_name(t)} (entry '{key}'): "
                                f"the terms are feature maps or token sequences", f"x[{key}]")
        return items

    def fold(self, call: Call, items: list[tuple[str, Any, str]]) -> Any:
        """Broadcast the terms in order; ``items`` are (key, type, argument name)."""
        key0, out, arg0 = items[0]
        for key, t, arg in items[1:]:
            try:
                out = broadcast(out, t, call.input_size)
            except Mismatch as e:
                raise call.fail(f"cannot {VERBS[self.name]} entry '{key}' {t.shape_str()} with "
                                f"the entries before it ({out.shape_str()}): {e.reason}", arg0, arg,
                                hint=e.hint) from None
        return out

    def infer(self, call: Call) -> Any:
        return self.fold(call, [(k, t, f"x[{k}]") for k, t in self.terms(call)])


class _WeightedReduction(_Reduction):
    args = dict(_Reduction.args, **{
        "w": Input((TaskMap,), "weights, one per term: the sum of w[k] * x[k] (the spec "
                               "writes sum(w[s] * x[s] for s in ...))", optional=True),
        "coeffs": Param(list, None, "constant weights, one per term, in order (the spec writes "
                                    "sum(0.5 * x[s] for s in ...))", item_type=float),
    })

    def infer(self, call: Call) -> Any:
        items = self.terms(call)
        weights = call.inputs.get("w")
        coeffs = call["coeffs"]
        if weights is not None and coeffs is not None:
            raise call.fail("give weights `w` or constant `coeffs`, not both", "w")
        if coeffs is not None and len(coeffs) != len(items):
            raise call.fail(f"{len(coeffs)} coefficients for {len(items)} terms", "x")
        if weights is None:
            return self.fold(call, [(k, t, f"x[{k}]") for k, t in items])
        if list(weights.items) != [k for k, _ in items]:
            raise call.fail(f"weights for {list(weights.items)} but terms {[k for k, _ in items]}",
                            "w", "x")
        products = []
        for key, t in items:
            w = weights.items[key]
            try:
                products.append((key, broadcast(w, t, call.input_size), f"x[{key}]"))
            except Mismatch as e:
                raise call.fail(f"cannot multiply weight {getattr(w, 'shape_str', lambda: '?')()} "
                                f"and term {t.shape_str()} of entry '{key}': {e.reason}",
                                f"w[{key}]", f"x[{key}]", hint=e.hint) from None
        return self.fold(call, products)


@register
class Sum(_WeightedReduction):
    name = "sum"
    module = "mtl_dsl.modules.algebra.Sum"
    doc = ("The sum of the terms (the spec writes sum(d), sum(a, b, c) or sum(x[s] for s in "
           "tasks if s != t)); sum(w[s] * x[s] for ...) is one weighted sum (a fold of "
           "torch.addcmul: one multiply-add per term and element, counted as MACs).")


@register
class Mean(_WeightedReduction):
    name = "mean"
    module = "mtl_dsl.modules.algebra.Mean"
    doc = "The mean of the terms (written like sum: mean(d), mean(x[s] for s in tasks), ...)."


@register
class Max(_Reduction):
    name = "max"
    module = "mtl_dsl.modules.algebra.Max"
    doc = "The element-wise maximum of the terms (max(a, b), max(x[s] for s in tasks))."


@register
class Min(_Reduction):
    name = "min"
    module = "mtl_dsl.modules.algebra.Min"
    doc = "The element-wise minimum of the terms (min(a, b), min(x[s] for s in tasks))."
