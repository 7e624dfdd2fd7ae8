"""The one error type of the language: every mistake in a spec is a ``SpecError``.

A ``SpecError`` carries one or more diagnostics (file, line, column, message, hint) so that a spec
with several independent mistakes reports all of them in one run. ``str(error)`` renders each as
``file:line:col: error: message``, the source line and a caret, which is what the CLI prints.

``Diagnostics`` is the one sink the stages of the front-end report into: the parser, the lowering
and the shape checker of one compilation share it, so it knows every source text (for the line
under each message) and turns what was reported into one ``SpecError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Iterable, Protocol


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    column: int
    message: str
    hint: str = ""
    source_line: str = ""
    length: int = 1
    notes: tuple[str, ...] = field(default_factory=tuple)

    def render(self) -> str:
        if self.line <= 0:  # no position: a flag, a folder, a whole file
            where = self.file
        elif self.column <= 0:
            where = f"{self.file}:{self.line}"
        else:
            where = f"{self.file}:{self.line}:{self.column}"
        out = [f"{where}: error: {self.message}"]
        if self.source_line:
            text = self.source_line.rstrip("\n").replace("\t", " ")
            if len(text) > 200:  # very long lines: show a window around the column
                start = max(0, self.column - 80)
                text = ("..." if start else "") + text[start:start + 160]
                col = self.column - start + (3 if start else 0)
            else:
                col = self.column
            gutter = f"{self.line:>5} | "
            out.append(gutter + text)
            width = max(1, min(self.length, max(1, len(text) - col + 1)))
            out.append(" " * (len(gutter) - 2) + "| " + " " * max(0, col - 1) + "^" + "~" * (width - 1))
        for note in self.notes:
            out.append(f"note: {note}")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


class SpecError(Exception):
    """One or more located mistakes in a spec (or a run config, or a file the user named)."""

    def __init__(self, diagnostics: Diagnostic | Iterable[Diagnostic]):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        if not self.diagnostics:
            raise ValueError("SpecError needs at least one diagnostic")
        super().__init__(self.render())

    # The fields of the first diagnostic, for callers that handle one error at a time.
    @property
    def file(self) -> str:
        return self.diagnostics[0].file

    @property
    def line(self) -> int:
        return self.diagnostics[0].line

    @property
    def column(self) -> int:
        return self.diagnostics[0].column

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    @property
    def hint(self) -> str:
        return self.diagnostics[0].hint

    def render(self) -> str:
        text = "\n\n".join(d.render() for d in self.diagnostics)
        if len(self.diagnostics) > 1:
            text += f"\n\n{len(self.diagnostics)} errors"
        return text

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):
        """Pickled with its diagnostics (a Ray worker's error reaches the driver whole)."""
        return (type(self), (self.diagnostics,))


class Located(Protocol):
    """Anything with a source position: the syntax tree's ``Loc``, the IR's ``SourceLoc``."""

    @property
    def file(self) -> str: ...

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...

    @property
    def length(self) -> int: ...


class Diagnostics:
    """The errors of one compilation, in the order they were found, and the texts they point into.

    Every stage reports here (``error`` for a located mistake, ``add`` for a diagnostic made
    elsewhere); ``raise_if_errors`` ends the compilation with all of them as one ``SpecError``.
    """

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self.sources: dict[str, list[str]] = {}

    def add_source(self, file: str, text: str) -> None:
        self.sources[file] = text.split("\n")

    def source_line(self, file: str, line: int) -> str:
        lines = self.sources.get(file, [])
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def error(self, loc: Located, message: str, hint: str = "",
              notes: tuple[str, ...] = ()) -> Diagnostic:
        """Record a mistake at ``loc`` (with its source line) and return it."""
        d = Diagnostic(loc.file, loc.line, loc.column, message, hint,
                       self.source_line(loc.file, loc.line), loc.length, notes)
        self.items.append(d)
        return d

    def add(self, diagnostics: Diagnostic | Iterable[Diagnostic]) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.items.extend(diagnostics)

    def __len__(self) -> int:
        return len(self.items)

    def as_error(self) -> SpecError:
        return SpecError(fold(self.items))

    def raise_if_errors(self) -> None:
        if self.items:
            raise self.as_error()


class UsageError(SpecError):
    """A mistake outside a spec: a run-config key, a command-line flag, a data folder, a checkpoint.

    It names where the mistake is (the flag as typed, the folder or file) and carries a line and
    column only when there is a real one (a key of a YAML file); the CLI prints it like a spec
    error and exits with status 2.
    """


def usage_error(where: str, message: str, hint: str = "", line: int = 0, column: int = 0,
                source_line: str = "") -> UsageError:
    """A :class:`UsageError` at ``where`` (``line`` 0: no position in it)."""
    return UsageError(Diagnostic(file=where, line=line, column=column, message=message, hint=hint,
                                 source_line=source_line))


MAX_PLACES_SHOWN = 4


def fold(items: list[Diagnostic]) -> list[Diagnostic]:
    """One root cause, one error: the errors that repeat an earlier one are folded into it.

    The same place failing again (once per loop value, per task, per call of a block) adds a
    count to the first; the same message at other places (one undefined table entry read in five
    places) adds the list of places. Everything else is kept, in the order it was found.
    """
    kept: list[Diagnostic] = []
    again: dict[int, int] = {}  # index in kept -> how many more times at its place
    elsewhere: dict[int, list[str]] = {}  # index in kept -> the other places of its message
    by_place: dict[tuple[str, int, int], int] = {}  # the place of a kept error -> its index
    other_places: set[tuple[str, int, int]] = set()  # places listed in a kept error's note
    by_message: dict[str, int] = {}
    for d in items:
        place = (d.file, d.line, d.column)
        if place in by_place:
            again[by_place[place]] = again.get(by_place[place], 0) + 1
        elif place in other_places:
            continue
        elif d.message in by_message:
            elsewhere.setdefault(by_message[d.message], []).append(f"{d.file}:{d.line}")
            other_places.add(place)
        else:
            by_place[place] = by_message[d.message] = len(kept)
            kept.append(d)
    out = []
    for i, d in enumerate(kept):
        notes = list(d.notes)
        if i in again:
            n = again[i]
            notes.append(f"this place fails {n} more time{'s' if n > 1 else ''} (for other loop "
                         f"values, tasks or calls of its block)")
        if i in elsewhere:
            places = list(dict.fromkeys(elsewhere[i]))
            shown = ", ".join(places[:MAX_PLACES_SHOWN])
            more = len(places) - MAX_PLACES_SHOWN
            notes.append(f"the same error at {len(places)} more place{'s' if len(places) > 1 else ''}"
                         f": {shown}" + (f" and {more} more" if more > 0 else ""))
        out.append(d if len(notes) == len(d.notes) else replace(d, notes=tuple(notes)))
    return out


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn ``a`` into ``b``."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """A hint naming the closest options, or '' when nothing is close.

    Close means a few typing slips away (edit distance up to a third of the name, swapped letters
    counting once), so that 'segsem' finds 'semseg'; failing that, a long common part (difflib's
    ratio of at least 0.6: 'upsample' finds 'upsample_concat').
    """
    opts = sorted(set(options))
    if not name or not opts:
        return ""
    scored = sorted((edit_distance(name.lower(), o.lower()), o) for o in opts)
    best = scored[0][0]
    if best <= (max(1, len(name) // 3) if len(name) >= 3 else 0):
        close = [o for d, o in scored if d == best][:3]
    else:
        close = get_close_matches(name, opts, n=3, cutoff=0.6)
    if not close:
        return ""
    if len(close) == 1:
        return f"did you mean '{close[0]}'?"
    return "did you mean " + ", ".join(f"'{c}'" for c in close[:-1]) + f" or '{close[-1]}'?"


def simple_error(file: str, message: str, hint: str = "", line: int | None = None,
                 column: int | None = None, source_line: str = "") -> SpecError:
    """An error about a whole file (too large, not UTF-8, missing) or a CLI value: it carries no
    position unless one is given (a quoted ``source_line`` is pointed at from its start), so a
    checkpoint or a flag never reads as a spec error at ``file:1:1``."""
    if line is None:
        line = 1 if source_line else 0
    if column is None:
        column = 1 if source_line else 0
    return SpecError(Diagnostic(file=file, line=line, column=column, message=message, hint=hint,
                                source_line=source_line))


def refuse_unwritable(path: Path, where: str) -> None:
    """Refuse, before any work, an output ``path`` (file or folder to be made) that cannot be
    written: a path under a file, or a folder that cannot be created or written into. One error
    at ``where`` (the flag or the path as given), no traceback."""
    import tempfile

    above = next((a for a in path.parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise simple_error(where, f"cannot write {path}: {above} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.").cleanup()
    except OSError as e:
        raise simple_error(where, f"cannot write {path}: {e.strerror or e}") from None
