"""ATRC's context-type search (`mtl-dsl search SPEC`): ATRC paper, section 3.3, as the official code
runs it (github.com/brdav/atrc, src/model/search_pl_model.py and the search head of src/model/heads/).

The spec's context table marks pairs as ``search``; each such pair compiles to a supergraph CP
block (``ContextSearch``: a Gumbel-softmax mixture of none, global, local, T-label and, off the
diagonal, S-label). Training runs through the ordinary training runtime (``run_training``: Ray
Train or in-process, checkpoints, resume and fault handling included); the blocks' own hooks
schedule the temperature (1 -> 0.05) and the entropy regulariser (-0.02 -> +0.06), freeze a block
once its top-1 minus top-2 probability reaches 0.3, and hand their logits to a separate Adam
(5e-4). At the end the spec is written back as ``<name>_found.mtl``: the text of every ``search``
table entry replaced by the chosen context, with the final probabilities in a comment. That file
is an ordinary spec.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import usage_error

CANDIDATES = ("none", "global", "local", "t_label", "s_label")
GENOTYPE_CODES = {name: code for code, name in enumerate(CANDIDATES)}  # the official file format
SEARCH_GRAD_CLIP = 10.0  # official: gradient clipping at norm 10 during the search


@dataclass
class PairChoice:
    """What the search decided for one (target, source) pair."""

    target: str
    source: str
    chosen: str
    probabilities: dict[str, float]  # softmax of the final architecture logits
    frozen: bool  # fixed by the probability-gap rule during training


@dataclass
class SearchResult:
    found_spec: Path
    choices: list[PairChoice]
    step: int
    run_dir: Any = None  # a local Path, or a storage Location
    checkpoint: Path | None = None
    genotype: dict = field(default_factory=dict)


# -- collecting the decisions ---------------------------------------------------------------------

def search_blocks(model) -> dict[str, Any]:
    """``{module name: ContextSearch}`` of a compiled model."""
    from ..modules.atrc import ContextSearch

    return {name: m for name, m in model.named_modules() if isinstance(m, ContextSearch)}


def collect_choices(model) -> list[PairChoice]:
    import torch

    choices = []
    for block in search_blocks(model).values():
        with torch.no_grad():
            probs = block.probabilities().tolist()
        choices.append(PairChoice(target=block.pair[0], source=block.pair[1],
                                  chosen=block.chosen(),
                                  probabilities=dict(zip(block.candidate_names, probs)),
                                  frozen=block.is_frozen))
    return choices


def genotype_of(choices: list[PairChoice], step: int) -> dict:
    """The official genotype JSON: ``{"data": {target: {source: code}}, "step": N}``."""
    data: dict[str, dict[str, int]] = {}
    for c in choices:
        data.setdefault(c.target, {})[c.source] = GENOTYPE_CODES[c.chosen]
    return {"data": data, "step": step}


# -- writing the found spec -----------------------------------------------------------------------

@dataclass
class _Entry:
    target: str
    source: str
    value: Any
    start: int  # offset of the value in the source text
    end: int


def _offsets(text: str) -> list[int]:
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    return starts


def _governing(entries: list[_Entry], target: str, source: str) -> _Entry | None:
    """The entry a lookup ``table[target][source]`` reads (the language's precedence)."""
    by_key = {(e.target, e.source): e for e in entries}
    for row in (target, "*"):
        for col in (source, "*"):
            if (row, col) in by_key:
                return by_key[(row, col)]
    return None


def _skip_back_space(text: str, i: int) -> int:
    """Index just after the previous non-space character before ``i`` (comments included)."""
    while True:
        while i > 0 and text[i - 1] in " \t\r\n":
            i -= 1
        line_start = text.rfind("\n", 0, i) + 1
        hash_at = _comment_start(text[line_start:i])
        if hash_at is None:
            return i
        i = line_start + hash_at


def _comment_start(line: str) -> int | None:
    in_string = False
    for k, ch in enumerate(line):
        if ch == '"':
            in_string = not in_string
        elif ch == "#" and not in_string:
            return k
    return None


def _key_before(text: str, value_start: int) -> tuple[int, str]:
    """Start offset of ``key: value`` and the token before it (``,`` or ``<-``)."""
    i = _skip_back_space(text, value_start)
    if text[i - 1] != ":":
        raise ValueError("table entry not in the expected form 'key: value'")
    i = _skip_back_space(text, i - 1)
    m = re.search(r'(\*|[A-Za-z_][A-Za-z0-9_]*|"[^"\n]*")$', text[:i])
    if not m:
        raise ValueError("table key not found")
    key_start = m.start()
    j = _skip_back_space(text, key_start)
    if text[j - 1] == ",":
        return key_start, ","
    if text[j - 2:j] == "<-":
        return key_start, "<-"
    raise ValueError("table entry not preceded by ',' or '<-'")


def _row_start(text: str, key_start: int) -> int:
    """Offset of the row key (``t`` of ``t <- ...``) of the row holding the entry at
    ``key_start``: the nearest ``<-`` before it, outside comments."""
    end = key_start
    while end > 0:
        line_start = text.rfind("\n", 0, end) + 1
        line = text[line_start:end]
        hash_at = _comment_start(line)
        if hash_at is not None:
            line = line[:hash_at]
        arrow = line.rfind("<-")
        if arrow >= 0:
            j = _skip_back_space(text, line_start + arrow)
            m = re.search(r'(\*|[A-Za-z_][A-Za-z0-9_]*|"[^"\n]*")$', text[:j])
            return m.start()
        end = line_start - 1
    raise ValueError("table row not found")


def format_choice(c: PairChoice) -> str:
    probs = ", ".join(f"{k} {v:.3f}" for k, v in c.probabilities.items())
    return f"{c.target} <- {c.source}: {c.chosen}{' (frozen)' if c.frozen else ''}  [{probs}]"


def rewrite_search_table(source: str, file_entries: list[Any], choices: list[PairChoice],
                         tasks: list[str], header: str = "") -> str:
    """The spec text with every ``search`` table entry replaced by the chosen contexts.

    ``file_entries``: the IR's table entries of this file (with the location of each value). An
    explicit ``t <- s: search`` gets its value replaced in place; ``t <- *: search`` becomes the
    explicit entries of the sources it stood for; a ``search`` entry of the ``*`` row becomes
    explicit rows for the targets it stood for. A comment with the final probabilities goes
    above the table.
    """
    table_name, entries = _searched_table(source, file_entries)
    by_pair = {(c.target, c.source): c for c in choices}
    missing = [f"{t} <- {s}" for t in tasks for s in tasks
               if (e := _governing(entries, t, s)) is not None and e.value == "search"
               and (t, s) not in by_pair]
    if missing:
        raise ValueError(f"no search result for {', '.join(missing)}")
    governed: dict[int, list[PairChoice]] = {}
    for t in tasks:
        for s in tasks:
            e = _governing(entries, t, s)
            if e is not None and e.value == "search":
                governed.setdefault(id(e), []).append(by_pair[(t, s)])
    edits = _entry_edits(source, entries, governed)
    table_at = _table_start(source, table_name, min(e.start for e in entries))
    indent = _indent_of(source, table_at)
    comment = [header] if header else []
    comment += ["Found by `mtl-dsl search`: target <- source: chosen context "
                "[final probabilities of the architecture logits]"]
    comment += [format_choice(c) for c in choices]
    edits.append((table_at, table_at, "".join(f"# {line}\n{indent}" if line else f"#\n{indent}"
                                              for line in comment)))
    return _apply(source, edits)


def _searched_table(source: str, file_entries: list[Any]) -> tuple[str, list[_Entry]]:
    """The one table with ``search`` entries: its name and entries (with their source spans)."""
    starts = _offsets(source)
    tables: dict[str, list[_Entry]] = {}
    for e in file_entries:
        begin = starts[e.loc.line - 1] + e.loc.column - 1
        tables.setdefault(e.table, []).append(
            _Entry(e.target, e.source, e.value, begin, begin + e.loc.length))
    searched = {name: es for name, es in tables.items() if any(e.value == "search" for e in es)}
    if not searched:
        raise ValueError("the spec has no table entry 'search'")
    if len(searched) > 1:
        raise ValueError(f"several tables have 'search' entries ({', '.join(searched)}); "
                         f"search one table at a time")
    (table_name, entries), = searched.items()
    return table_name, entries


def _indent_of(source: str, at: int) -> str:
    return source[source.rfind("\n", 0, at) + 1:at]


def _entry_edits(source: str, entries: list[_Entry],
                 governed: dict[int, list[PairChoice]]) -> list[tuple[int, int, str]]:
    """The edits of the ``search`` entries: values in place, ``t <- *`` as explicit sources, the
    ``*`` row's entries as explicit rows (one per target, where the row stood)."""
    edits: list[tuple[int, int, str]] = []
    star_rows: dict[int, list[tuple[_Entry, list[PairChoice]]]] = {}
    rows_removed: set[int] = set()
    for e in entries:
        if e.value != "search":
            continue
        pairs = governed.get(id(e), [])
        if e.target != "*" and e.source != "*":
            edits.append((e.start, e.end, pairs[0].chosen if pairs else "none"))
            continue
        key_start, before = _key_before(source, e.start)
        if e.target != "*":  # t <- *: search -> the explicit sources
            text = ", ".join(f"{c.source}: {c.chosen}" for c in pairs)
            if text:
                edits.append((key_start, e.end, text))
            else:
                edits.append(_remove_entry(source, key_start, e.end, before))
            continue
        row = _row_start(source, key_start)
        star_rows.setdefault(row, []).append((e, pairs))
        removal = _remove_entry(source, key_start, e.end, before)
        if removal[0] == row:
            rows_removed.add(row)
        edits.append(removal)
    for row, items in star_rows.items():
        indent = _indent_of(source, row)
        by_target: dict[str, list[PairChoice]] = {}
        for _, pairs in items:
            for c in pairs:
                by_target.setdefault(c.target, []).append(c)
        width = max((len(t) for t in by_target), default=0)
        lines = [f"{t.ljust(width)} <- " + ", ".join(f"{c.source}: {c.chosen}" for c in cs)
                 for t, cs in by_target.items()]
        tail = "" if row in rows_removed else "\n" + indent  # the row's other entries stay
        edits.append((row, row, ("\n" + indent).join(lines) + tail))
    return edits


def _remove_entry(text: str, key_start: int, end: int, before: str) -> tuple[int, int, str]:
    if before == ",":  # drop ", key: value"
        comma = _skip_back_space(text, key_start) - 1
        return comma, end, ""
    # first entry: drop "key: value" and the comma after it, if any
    k = end
    while k < len(text) and text[k] in " \t":
        k += 1
    if k < len(text) and text[k] == ",":
        k += 1
        while k < len(text) and text[k] in " \t\r\n":
            k += 1
        return key_start, k, ""
    # the only entry of its row: drop the whole "key <- key: value" row
    row = _row_start(text, key_start)
    return row, end, ""


def _default_folder(spec_path: Path) -> Path:
    """Beside a user's spec (its relative imports keep working); the current folder for a
    built-in one."""
    from ..frontend import builtin_spec_dirs

    builtin = {d.resolve() for d in builtin_spec_dirs()}
    return Path.cwd() if spec_path.resolve().parent in builtin else spec_path.parent


def _table_start(text: str, name: str, before: int) -> int:
    last = None
    for m in re.finditer(rf"\btable\s+{re.escape(name)}\s*\{{", text[:before]):
        last = m
    if last is None:
        raise ValueError(f"table '{name}' not found")
    return last.start()


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    ordered = sorted(edits, key=lambda e: (e[0], e[1]))
    for a, b in zip(ordered, ordered[1:]):
        if b[0] < a[1]:
            raise ValueError("overlapping edits of the spec text")
    for start, end, new in reversed(ordered):
        text = text[:start] + new + text[end:]
    return text


def write_found_spec(spec: str | Path, choices: list[PairChoice], output: str | Path | None = None,
                     *, tasks: str | None = None, overrides: dict | None = None,
                     preset: str | None = None, input_size: tuple[int, int] | None = None,
                     model: str | None = None, plugins: Sequence[str] = (),
                     note: str = "") -> Path:
    """Write ``<name>_found.mtl`` (or ``output``) and check that it compiles to no search block."""
    from ..api import load_ir, resolve_spec_path

    path, display = resolve_spec_path(spec)
    ir = load_ir(spec, tasks=tasks, overrides=overrides, preset=preset, input_size=input_size,
                 model=model, plugins=plugins)
    source = path.read_text(encoding="utf-8")
    mine = [e for e in ir.tables if e.loc.file == display]  # entries of this file, not imports
    if not any(e.value == "search" for e in mine):
        others = sorted({e.loc.file for e in ir.tables if e.value == "search"})
        where = f" (the search entries are in {', '.join(others)})" if others else ""
        raise usage_error(display, f"{display} has no context table entry 'search' to "
                                    f"rewrite{where}")
    header = f"{path.stem}_found.mtl: {path.name} with the contexts found for tasks " \
             f"{', '.join(t.name for t in ir.tasks)}" + (f" ({note})" if note else "")
    try:
        text = rewrite_search_table(source, mine, choices, [t.name for t in ir.tasks], header)
    except ValueError as exc:
        raise usage_error(display, f"cannot write the found spec: {exc}") from None
    target = Path(output) if output is not None else _default_folder(path) / f"{path.stem}_found.mtl"
    if target.is_dir():
        target = target / f"{path.stem}_found.mtl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    found = load_ir(target, tasks=tasks, overrides=overrides, preset=preset,
                    input_size=input_size, model=model)
    left = [n.name for n in found.nodes
            if n.block == "context_pool" and n.params.get("kind") == "search"]
    if left:
        raise usage_error(str(target), f"the found spec still searches {', '.join(left)}")
    return target


# -- the command ----------------------------------------------------------------------------------

def search(spec: str | Path, config=None, *, output: str | Path | None = None,
           resume: bool = False, plain: bool = False, verbose: bool = False,
           progress=None) -> SearchResult:
    """Train the supergraph of ``spec`` with ``run_training`` and write the found spec."""
    import torch

    from ..api import compile_model
    from .checkpoints import load_checkpoint, load_model_weights
    from .config import load_config
    from .launch import run_training

    cfg = (config if config is not None else load_config()).for_spec(spec)
    if cfg.training.grad_clip is None:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
            update={"grad_clip": SEARCH_GRAD_CLIP})})
    spec_kwargs = cfg.model_arguments()
    model = compile_model(str(spec), **spec_kwargs)
    if not search_blocks(model):
        raise usage_error(str(spec), f"{spec} has nothing to search: no context table entry is "
                                      f"'search' (for these tasks and parameters)")
    result = run_training(spec, cfg, resume=resume, plain=plain, verbose=verbose,
                          progress=progress)
    if result.checkpoint is None:
        raise usage_error(str(spec), "the search run left no checkpoint to read the architecture "
                                      "from")
    checkpoint = load_checkpoint(result.checkpoint, with_state=False)
    load_model_weights(model, checkpoint)
    model.eval()
    with torch.no_grad():
        choices = collect_choices(model)
    genotype = genotype_of(choices, checkpoint.step)
    if result.run_dir is not None:
        from .storage import Location

        text = json.dumps(genotype, indent=1)
        if isinstance(result.run_dir, Location):  # a run folder in remote storage
            result.run_dir.child("atrc_genotype.json").write_bytes(text.encode("utf-8"))
        else:
            (Path(result.run_dir) / "atrc_genotype.json").write_text(text)
    found = write_found_spec(spec, choices, output, note=f"step {checkpoint.step}", **spec_kwargs)
    return SearchResult(found_spec=found, choices=choices, step=checkpoint.step,
                        run_dir=result.run_dir, checkpoint=checkpoint.path, genotype=genotype)
