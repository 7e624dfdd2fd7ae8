"""Search spaces of ``mtl-dsl tune``: the ``--search`` flags and the run config's ``tune:`` section.

A search dimension is a key and what to try for it, written the same way on the command line
(``--search dim=[64,128,256]``, ``--search optimizer.lr=loguniform(1e-4,1e-2)``) and in a run
config::

    tune:
      search:
        dim: [64, 128, 256]                      # a YAML list: every value (a grid)
        optimizer.lr: loguniform(1e-4, 1e-2)     # a text: the same syntax as --search
      samples: 2
      scheduler: asha
      metric: semseg.mIoU

The key: a dotted name is a run-config key (``optimizer.lr``, ``training.batch_size``), a plain
name a model parameter of the spec (``dim``, ``depth``, ``backbone``), and ``preset`` the spec's
model preset. What to try:

* ``[a, b, c]`` or ``grid(a, b, c)``: every value (Ray Tune's ``grid_search``);
* ``choice(a, b, c)``: one value at random for each sample;
* ``uniform(lo, hi)``, ``quniform(lo, hi, q)``, ``loguniform(lo, hi)``, ``qloguniform(lo, hi, q)``,
  ``randint(lo, hi)``, ``qrandint(lo, hi, q)``, ``lograndint(lo, hi)``, ``qlograndint(lo, hi, q)``,
  ``randn(mean, sd)``, ``qrandn(mean, sd, q)``: Ray Tune's distributions, same names, arguments
  and bounds (``randint``'s upper bound is excluded, as in Tune).

Values are literals: numbers, ``"text"``, bare words (``resnet18``), ``true`` / ``false`` /
``none`` and lists. The text is read by a small Lark grammar and never evaluated. This module
imports neither torch nor ray (the run config imports it); ``to_tune`` imports Ray Tune.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from ..errors import Diagnostic, SpecError

_GRAMMAR = r"""
?start: value
?value: call | list | scalar
call: NAME "(" [value ("," value)*] ")"
list: "[" [value ("," value)*] "]"
?scalar: NUMBER -> number
       | STRING -> string
       | NAME -> word
NUMBER: /[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/
STRING: /"(?:[^"\\]|\\.)*"/ | /'[^']*'/
NAME: /[A-Za-z_][A-Za-z0-9_.:\-]*/
%ignore /[ \t]+/
"""

GRID, CHOICE = "grid", "choice"
# Ray Tune's distributions: name -> (argument names, integer-valued)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "uniform": (("lo", "hi"), False),
    "quniform": (("lo", "hi", "q"), False),
    "loguniform": (("lo", "hi"), False),
    "qloguniform": (("lo", "hi", "q"), False),
    "randint": (("lo", "hi"), True),
    "qrandint": (("lo", "hi", "q"), True),
    "lograndint": (("lo", "hi"), True),
    "qlograndint": (("lo", "hi", "q"), True),
    "randn": (("mean", "sd"), False),
    "qrandn": (("mean", "sd", "q"), False),
}
KINDS = (GRID, CHOICE, *DISTRIBUTIONS)
_WORDS = {"true": True, "false": False, "none": None}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


class SearchSyntaxError(ValueError):
    """A search expression that cannot be read; ``column`` is 1-based in the expression."""

    def __init__(self, message: str, column: int = 1, hint: str = ""):
        super().__init__(message)
        self.message, self.column, self.hint = message, column, hint


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` is ``grid``, ``choice`` or a distribution of ``DISTRIBUTIONS``;
    ``args`` are the values (grid, choice) or the distribution's numbers."""

    key: str
    kind: str
    args: tuple

    @property
    def target(self) -> str:
        """``model`` (a spec parameter), ``preset`` or ``run`` (a run-config key)."""
        if self.key == "preset":
            return "preset"
        return "run" if "." in self.key else "model"

    @property
    def is_grid(self) -> bool:
        return self.kind == GRID

    def text(self) -> str:
        """The dimension as a ``--search`` value (parsing it gives this dimension back)."""
        if self.kind == GRID:
            return format_value(list(self.args))
        return f"{self.kind}({', '.join(format_value(a) for a in self.args)})"

    def candidates(self) -> list[Any]:
        """Values a trial may receive that bound the rest: every value of a grid or a choice, the
        smallest and largest of a bounded distribution (none for ``randn``)."""
        if self.kind in (GRID, CHOICE):
            return list(self.args)
        if self.kind in ("randn", "qrandn"):
            return []
        lo, hi = self.args[0], self.args[1]
        if self.kind in ("randint", "lograndint"):
            hi = hi - 1  # Tune's upper bound is excluded
        return [lo, hi]

    def to_tune(self):
        from ray import tune

        if self.kind == GRID:
            return tune.grid_search(list(self.args))
        if self.kind == CHOICE:
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)


# -- reading -----------------------------------------------------------------------------------------


def parse_dimension(key: str, text: str) -> Dimension:
    """The dimension ``key=text``; raises :class:`SearchSyntaxError` (column in ``text``)."""
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SearchSyntaxError(f"'{key}' is not a parameter name or a dotted run-config key")
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        column = getattr(exc, "column", 1) or 1
        if getattr(getattr(exc, "token", None), "type", "") == "$END":
            column = len(text.rstrip()) + 1  # just after the text
        raise SearchSyntaxError(_unexpected(exc, text), column if column > 0 else 1,
                                "write a list [a, b], choice(a, b) or a distribution such as "
                                "loguniform(1e-4, 1e-2)") from None
    if isinstance(tree, Tree) and tree.data == "list":
        values = [_literal(child) for child in tree.children]
        return _checked(Dimension(key, GRID, tuple(values)), _column(tree))
    if isinstance(tree, Tree) and tree.data == "call":
        name = str(tree.children[0])
        args = tuple(_literal(child) for child in tree.children[1:])
        return _checked(Dimension(key, name, args), _column(tree))
    raise SearchSyntaxError(f"'{text.strip()}' is one value, not a search: write a list [a, b], "
                            f"choice(...) or a distribution (a fixed value goes in --set)",
                            _column(tree))


def dimension_from_yaml(key: str, value: Any) -> Dimension:
    """A ``tune.search`` entry: a YAML list is a grid of its values, a text is an expression."""
    if isinstance(value, list):
        for item in value:
            _check_literal(item)
        return _checked(Dimension(key, GRID, tuple(value)), 1)
    if isinstance(value, str):
        return parse_dimension(key, value)
    raise SearchSyntaxError(f"expected a list of values or a text such as 'loguniform(1e-4, 1e-2)',"
                            f" got {value!r}")


def _unexpected(exc: UnexpectedInput, text: str) -> str:
    token = getattr(exc, "token", None)
    if token is not None and getattr(token, "type", "") == "$END":
        return f"unexpected end of '{text}'"
    if token is not None:
        return f"unexpected '{token}' in '{text}'"
    char = getattr(exc, "char", None)
    return f"unexpected '{char}' in '{text}'" if char else f"cannot read '{text}'"


def _column(node: Any) -> int:
    meta = getattr(node, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return meta.column
    return getattr(node, "column", 1) or 1


def _literal(node: Any) -> Any:
    if isinstance(node, Tree):
        if node.data == "number":
            raw = str(node.children[0])
            if re.fullmatch(r"[+-]?\d+", raw):
                return int(raw)
            value = float(raw)
            if not math.isfinite(value):
                raise SearchSyntaxError(f"{raw} is not a finite number", _column(node))
            return value
        if node.data == "string":
            raw = str(node.children[0])
            return json.loads(raw) if raw.startswith('"') else raw[1:-1]
        if node.data == "word":
            raw = str(node.children[0])
            return _WORDS.get(raw, raw)
        if node.data == "list":
            return [_literal(child) for child in node.children]
        if node.data == "call":
            raise SearchSyntaxError(f"'{node.children[0]}(...)' inside a search is not a value: "
                                    f"distributions cannot be nested", _column(node))
    if isinstance(node, Token):  # a bare token (lark inlines single-child rules)
        return str(node)
    raise SearchSyntaxError(f"cannot read {node!r}")


def _check_literal(value: Any) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SearchSyntaxError(f"{value} is not a finite number")
        return
    if isinstance(value, list):
        for item in value:
            _check_literal(item)
        return
    raise SearchSyntaxError(f"{value!r} is not a value (numbers, text, true/false/none, lists)")


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def _checked(dim: Dimension, column: int) -> Dimension:
    """The dimension if its arguments make sense for its kind."""
    kind, args = dim.kind, dim.args
    if kind not in KINDS:
        from ..errors import did_you_mean

        raise SearchSyntaxError(f"unknown search '{kind}(...)'", column,
                                did_you_mean(kind, KINDS) or f"known: [a, b], {', '.join(KINDS)}")
    if kind in (GRID, CHOICE):
        if not args:
            raise SearchSyntaxError(f"{'a grid' if kind == GRID else 'choice()'} needs at least "
                                    f"one value", column)
        if dim.target == "preset" and not all(isinstance(a, str) for a in args):
            raise SearchSyntaxError("a preset is a name", column)
        return dim
    names, integer = DISTRIBUTIONS[kind]
    if len(args) != len(names):
        raise SearchSyntaxError(f"{kind}({', '.join(names)}) takes {len(names)} numbers, got "
                                f"{len(args)}", column)
    for name, value in zip(names, args):
        if not _is_number(value, integer):
            what = "an integer" if integer else "a number"
            raise SearchSyntaxError(f"{kind}: {name} must be {what}, got {format_value(value)}", column)
    if kind in ("randn", "qrandn"):
        if args[1] <= 0:
            raise SearchSyntaxError(f"{kind}: sd must be positive, got {args[1]}", column)
    elif args[0] >= args[1]:
        raise SearchSyntaxError(f"{kind}: lo must be below hi, got {args[0]} and {args[1]}", column)
    if kind.startswith(("log", "qlog")) and args[0] <= 0:
        raise SearchSyntaxError(f"{kind}: lo must be positive on a log scale, got {args[0]}", column)
    if len(names) == 3 and args[2] <= 0:
        raise SearchSyntaxError(f"{kind}: q must be positive, got {args[2]}", column)
    return dim


def format_value(value: Any) -> str:
    """A value as it is written in a search expression."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:\-]*", value) and value not in _WORDS \
            else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


def parse_search_flag(item: str) -> Dimension:
    """``--search KEY=EXPR``; a mistake is a ``SpecError`` naming the flag with a caret."""
    key, sep, text = item.partition("=")
    where = "--search"
    if not sep or not key.strip():
        raise SpecError(Diagnostic(where, 1, 1, f"expected KEY=VALUES such as dim=[64,128], got "
                                                f"'{item}'", source_line=item))
    try:
        return parse_dimension(key, text)
    except SearchSyntaxError as exc:
        offset = len(key) + 1 if exc.column > 0 else 0
        raise SpecError(Diagnostic(where, 1, offset + exc.column, exc.message, exc.hint,
                                   source_line=item)) from None


# -- the run config's ``tune:`` section ---------------------------------------------------------------------


def _valid_entry(value: Any) -> Any:
    try:
        dimension_from_yaml("entry", value)
    except SearchSyntaxError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    return value


SearchEntry = Annotated[Union[list, str], AfterValidator(_valid_entry)]


def _valid_metric(name: Optional[str]) -> Optional[str]:
    if name is not None:
        normalise_metric(name)
    return name


def _valid_budget(value: Union[str, float, int, None]) -> Union[str, float, int, None]:
    if value is not None:
        budget_seconds(value)
    return value


class TuneSection(BaseModel):
    """``tune:`` in a run config (every key also has a ``mtl-dsl tune`` flag, which wins)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # key -> list of values or a search expression (see the module docstring)
    search: dict[str, SearchEntry] = Field(default_factory=dict)
    samples: StrictInt = Field(1, ge=1, le=100_000)  # Tune's num_samples (each grid point this often)
    scheduler: Literal["fifo", "asha"] = "fifo"
    # the metric to optimise: delta_m (needs baseline) or <task>.<metric>, e.g. semseg.mIoU
    metric: Annotated[Optional[str], AfterValidator(_valid_metric)] = None
    baseline: Optional[str] = None  # single-task baseline file (YAML) for delta_m
    budget: Annotated[Optional[Union[StrictInt, StrictFloat, str]], AfterValidator(_valid_budget)] = None
    concurrent: StrictInt = Field(1, ge=1, le=4096)  # trials at once
    grace_period: Optional[StrictInt] = Field(None, ge=1)  # ASHA: steps before a trial may stop
    reduction_factor: Union[StrictInt, StrictFloat] = Field(3, gt=1)  # ASHA: 1/rf go on per rung

    def dimensions(self) -> list[Dimension]:
        return [dimension_from_yaml(k, v) for k, v in self.search.items()]


def normalise_metric(name: str) -> str:
    """``semseg.mIoU`` or ``semseg/mIoU`` -> ``semseg/mIoU``; ``delta_m`` stays."""
    text = name.strip()
    if text == "delta_m":
        return text
    task, sep, metric = text.replace("/", ".").partition(".")
    if not sep or not task or not metric:
        raise ValueError(f"metric '{name}': expected delta_m or <task>.<metric> such as semseg.mIoU")
    return f"{task}/{metric}"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def budget_seconds(value: Union[str, float, int]) -> float:
    """``90`` (seconds), ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"budget: expected seconds or a duration such as 2h or 30m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        else:
            raise ValueError(f"budget: expected seconds or a duration such as 2h, 30m or 1h30m, "
                             f"got '{value}'")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"budget: must be a positive duration, got {value!r}")
    return seconds


__all__ = ["DISTRIBUTIONS", "Dimension", "SearchSyntaxError", "TuneSection", "budget_seconds",
           "dimension_from_yaml", "format_value", "normalise_metric", "parse_dimension",
           "parse_search_flag"]
