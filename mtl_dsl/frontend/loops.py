"""The iterations of a loop: a ``for`` statement's and a generator's (``x[s] for s in tasks if
s != t``) follow the same rules.

The iterable is a constant list (a table or table row stands for the task names); every value is
a name or an integer; each iteration gets its own scope with the loop variable bound, and names
bound in a loop body get the loop value appended to their node names; the filter (``if cond``) is
a constant true or false evaluated in that scope.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from . import ast
from .values import Scope, TableRow, TableValue, short, type_name

if TYPE_CHECKING:  # pragma: no cover
    from .consteval import Evaluator

RESERVED_NAMES = {"out", "images", "tasks"}


def iterations(ev: "Evaluator", var: str, iterable: ast.Expr, condition: ast.Expr | None,
               scope: Scope, loc: ast.Loc, what: str = "a for loop") -> Iterator[tuple[object, Scope]]:
    """(loop value, scope of the iteration) for every value the filter keeps."""
    items = ev.const(iterable, scope, what)
    if isinstance(items, (TableRow, TableValue)):
        items = list(ev.tasks)
    if not isinstance(items, list):
        raise ev.error(iterable.loc, f"{what} runs over a list, got {type_name(items)}")
    if var in RESERVED_NAMES:
        raise ev.error(loc, f"'{var}' is reserved and cannot be a loop variable")
    for item in items:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise ev.error(iterable.loc, f"{what} runs over names or integers, got "
                                         f"{type_name(item)} {short(item)}")
        inner = Scope(vars={var: item}, parent=scope, prefix=scope.prefix,
                      suffix=scope.suffix + (str(item),), is_function=False, file=scope.file,
                      loop_var=var)
        if condition is not None:
            cond = ev.const(condition, inner, "a loop condition")
            if not isinstance(cond, bool):
                raise ev.error(condition.loc, "a loop condition must be true or false")
            if not cond:
                continue
        yield item, inner
