"""Reading run-config YAML safely, and finding where a key was written.

YAML is read with PyYAML's safe loader (no object construction) under the limits spec files have:
at most ``MAX_CONFIG_BYTES`` of text, mappings and lists nested at most ``MAX_NESTING`` deep, and
at most ``MAX_NODES`` values once every alias is expanded (an "alias bomb" such as ten lists of
ten references to the previous list is a few lines of text but 10**10 values: it is refused before
anything walks it). A key written twice in one mapping is an error (PyYAML would keep the last
without a word). Numbers are read as YAML 1.2 writes them: ``1e-3`` is a float, not the string
PyYAML's YAML 1.1 rules make of it.

Each layer of a run config has a ``Source`` that turns a dotted key path into a place a person can
find, for errors of one line: ``FileSource`` gives the file, line and column of the key;
``FlagSource`` gives the command-line flag as typed (``--set optimizer.lr=abc``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import UsageError, usage_error

MAX_CONFIG_BYTES = 1 << 20  # as spec files (mtl_dsl/frontend: 1 MiB)
MAX_NESTING = 64  # as spec files' brackets
MAX_NODES = 100_000  # values after alias expansion


class _Loader(yaml.SafeLoader):
    """The safe loader, with YAML 1.2's floats (``1e-3``, ``1E5``) read as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _measure(node: yaml.Node) -> tuple[int, int]:
    """(values after alias expansion, nesting depth) of a composed document, in linear time:
    an alias is the same node object, measured once."""
    memo: dict[int, tuple[int, int]] = {}

    def walk(n: yaml.Node) -> tuple[int, int]:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = (MAX_NODES + 1, MAX_NESTING + 1)  # a node reaching itself is refused
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        else:
            children = []
        size, depth = 1, 0
        for child in children:
            s, d = walk(child)
            size, depth = size + s, max(depth, d)
        memo[key] = (size, depth + (1 if children else 0))
        return memo[key]

    return walk(node)


_MERGE = "tag:yaml.org,2002:merge"


def _repeated_key(node: yaml.Node) -> Optional[tuple[yaml.Node, yaml.Node]]:
    """(first, second) writing of a key given twice in one mapping, or None. PyYAML keeps the
    last value without a word; a run config given twice the same key is a mistake to show."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: dict[str, yaml.Node] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                    if k.value in keys:
                        return keys[k.value], k
                    keys[k.value] = k
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def load_yaml(text: str, where: str) -> Any:
    """The data of one YAML document, or a ``UsageError`` at ``where`` (with the line of a
    syntax error)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise usage_error(where, f"config text is too large ({len(text):,} characters; the "
                                 f"limit is {MAX_CONFIG_BYTES:,} bytes)")
    try:
        loader = _Loader(text)  # its reader refuses control characters at once
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise usage_error(where, f"invalid YAML: control character U+{exc.character:04X} "
                                 f"(is this a binary file?)", line=line, column=column) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size, depth = _measure(node)
        if depth > MAX_NESTING:
            raise usage_error(where, f"config is nested more than {MAX_NESTING} levels deep")
        if size > MAX_NODES:
            raise usage_error(where, f"config expands to more than {MAX_NODES:,} values (YAML "
                                     f"aliases repeat what they point to)")
        repeated = _repeated_key(node)
        if repeated is not None:
            first, second = repeated
            raise usage_error(where, f"key '{second.value}' is given twice (first at line "
                                     f"{first.start_mark.line + 1}); the last would silently win",
                              line=second.start_mark.line + 1, column=second.start_mark.column + 1)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is None:
            raise usage_error(where, f"invalid YAML: {problem}") from None
        raise usage_error(where, f"invalid YAML: {problem}", line=mark.line + 1,
                          column=mark.column + 1) from None
    except RecursionError:
        raise usage_error(where, f"config is nested more than {MAX_NESTING} levels deep") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> tuple[Any, "FileSource"]:
    name = str(path)
    if not path.is_file():
        raise usage_error(name, f"config file not found: {name}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise usage_error(name, f"config file is too large ({size:,} bytes; the limit is "
                                    f"{MAX_CONFIG_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except UsageError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise usage_error(name, f"cannot read config file: {exc}") from None
    return load_yaml(text, name), FileSource(name, text)


class Source:
    """Where a layer of the run config came from."""

    name = "<config>"

    def has(self, path: tuple) -> bool:
        return False

    def error(self, path: tuple, message: str) -> UsageError:
        """A one-line error about the key ``path`` of this layer."""
        return usage_error(self.name, message)


class FileSource(Source):
    """A YAML file: errors carry the line and column of the key."""

    def __init__(self, name: str, text: str):
        self.name, self.text = name, text
        self._data: Any = None
        self._node: Optional[yaml.Node] = None

    def _composed(self) -> Optional[yaml.Node]:
        if self._node is None and self.text:
            loader = _Loader(self.text)
            try:
                self._node = loader.get_single_node()
            except yaml.YAMLError:
                self._node = None
            finally:
                loader.dispose()
        return self._node

    def has(self, path: tuple) -> bool:
        node = self._composed()
        for key in path:
            node = _child(node, key)
            if node is None:
                return False
        return True

    def position(self, path: tuple) -> tuple[int, int]:
        """(line, column) of the deepest key of ``path`` present (1-based); (0, 0) if none."""
        node, line, column = self._composed(), 0, 0
        for key in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == str(key):
                        line, column = k.start_mark.line + 1, k.start_mark.column + 1
                        node = v
                        break
                else:
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line, column = node.start_mark.line + 1, node.start_mark.column + 1
            else:
                break
        return line, column

    def error(self, path: tuple, message: str) -> UsageError:
        line, column = self.position(path)
        return usage_error(self.name, message, line=line, column=column)


def _child(node: Optional[yaml.Node], key: Any) -> Optional[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return v
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key]
    return None


class FlagSource(Source):
    """Command-line flags: ``flags`` maps a dotted key to the flag that set it, as typed."""

    name = "--set"

    def __init__(self, data: dict, flags: dict[str, str] | None = None):
        self.data = data
        self.flags = dict(flags or {})

    def has(self, path: tuple) -> bool:
        node: Any = self.data
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                return False
        return True

    def flag(self, path: tuple) -> str:
        """The flag that set ``path`` (or the nearest enclosing key)."""
        for end in range(len(path), 0, -1):
            dotted = ".".join(str(p) for p in path[:end])
            if dotted in self.flags:
                return self.flags[dotted]
        return "--set " + ".".join(str(p) for p in path)

    def error(self, path: tuple, message: str) -> UsageError:
        return usage_error(self.flag(path), message)
