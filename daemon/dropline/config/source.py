"""Reading the configuration file: YAML text to plain values, with the line of each.

The file is parsed once into dicts, lists and scalars; every value keeps the
line it was written on, by its dotted key ("pipelines[0].stages[1].timeout"),
so that the checks after this (load.py, a builtin's options) can name the
exact line.  Problems of the YAML itself (bad syntax, duplicate keys, merges
of what is not a mapping, keys that are not strings, values YAML cannot
construct) are ConfigErrors raised here.  Nothing here knows the keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ConfigError
from .values import describe

# The last step of a dotted key: ".name" or "[3]".
_PARENT = re.compile(r"(?:\.[^.\[]*|\[\d+\])$|^[^.\[]*$")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class Source:
    """Where each value of one configuration file was written (dotted key -> line)."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base  # the file's folder: relative paths in it start there
        self.lines: dict[str, int] = {}  # the line of each value
        self.key_lines: dict[str, int] = {}  # the line of each key (of a list item: the item)

    def line(self, key: str) -> int:
        """The line of KEY's value, else of the nearest value around it that has one."""
        while key not in self.lines:
            if not key:
                return 0
            key = _PARENT.sub("", key)
        return self.lines[key]

    def key_line(self, key: str) -> int:
        return self.key_lines.get(key) or self.line(key)

    def lines_under(self, key: str) -> dict[str, int]:
        """The key lines below KEY, by their path relative to it ("columns[2].type")."""
        start = len(key)
        found: dict[str, int] = {}
        for path, line in self.key_lines.items():
            if path.startswith(key) and len(path) > start and path[start] in ".[":
                found[path[start + 1 :] if path[start] == "." else path[start:]] = line
        return found


class Loc:
    """One key of the configuration: the place an error about its value names."""

    __slots__ = ("key", "source")

    def __init__(self, source: Source, key: str) -> None:
        self.source = source
        self.key = key

    def child(self, name: str) -> Loc:
        return Loc(self.source, f"{self.key}.{name}" if self.key else name)

    def item(self, index: int) -> Loc:
        return Loc(self.source, f"{self.key}[{index}]")

    @property
    def line(self) -> int:
        return self.source.line(self.key)

    def error(self, message: str, *, line: int | None = None) -> ConfigError:
        """An error at this value's line (or LINE), naming this key."""
        where = self.source.line(self.key) if line is None else line
        return ConfigError(message, file=self.source.file, line=where, key=self.key)

    def fail(self, name: str, message: str) -> NoReturn:
        """Raise an error about the key NAME below this one (a stage's own check of it)."""
        raise self.child(name).error(message)

    def key_error(self, message: str) -> ConfigError:
        """An error at the line of this key itself (an unknown or misplaced key)."""
        return self.error(message, line=self.source.key_line(self.key))


def read_config(path: Path) -> tuple[object, Source]:
    """The file's values and their lines; ConfigError for anything YAML refuses."""
    file = str(path)
    text = _read_text(path)
    source = Source(file, path.parent)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, file, text) from None
    try:
        try:
            root = loader.get_single_node()
        except (yaml.YAMLError, RecursionError) as exc:
            raise _yaml_error(exc, file, text) from None
        if root is None:
            raise ConfigError(
                "the file is empty; expected a mapping with at least data_dir, state_db, pipelines",
                file=file,
                line=1,
            )
        return _Reader(loader, source).value(root, "", frozenset()), source
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    file = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("cannot read the configuration: no such file", file=file) from None
    except IsADirectoryError:
        raise ConfigError("cannot read the configuration: it is a directory", file=file) from None
    except PermissionError:
        # Not a bad configuration: the caller may not read it (exit 1, README "Exit codes").
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror}", file=file) from None
    try:
        # utf-8-sig because editors on some systems still write a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"the file is not UTF-8 text (byte {exc.start}); save it as UTF-8",
            file=file,
            line=line,
        ) from None


def _yaml_error(exc: BaseException, file: str, text: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        context = exc.context
        # An unclosed "[" or "{" is found lines later; say where it was opened.
        if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context += f" (started at line {exc.context_mark.line + 1})"
        what = ", ".join(part for part in (context, exc.problem) if part)
        if mark is None:
            return ConfigError(f"invalid YAML: {what}", file=file)
        return ConfigError(
            f"invalid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})",
            file=file,
            line=mark.line + 1,
        )
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return ConfigError(f"invalid YAML: {exc.reason}", file=file, line=line)
    if isinstance(exc, RecursionError):
        return ConfigError("invalid YAML: nested too deeply", file=file)
    return ConfigError(f"invalid YAML: {exc}", file=file)


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 0


class _Reader:
    """Turns the composed node tree into plain values, recording each one's line."""

    def __init__(self, loader: yaml.SafeLoader, source: Source) -> None:
        self.loader = loader
        self.source = source

    def error(self, message: str, node: Node, key: str) -> ConfigError:
        return ConfigError(message, file=self.source.file, line=_line(node), key=key)

    def value(self, node: Node, key: str, above: frozenset[int]) -> object:
        self.source.lines.setdefault(key, _line(node))
        if id(node) in above:
            raise self.error("a value contains itself (a recursive alias)", node, key)
        above = above | {id(node)}
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            built: dict[str, object] = {}
            for name, (key_node, value_node) in self.pairs(node, key).items():
                sub = f"{key}.{name}" if key else name
                self.source.key_lines.setdefault(sub, _line(key_node))
                built[name] = self.value(value_node, sub, above)
            return built
        if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            items: list[object] = []
            for i, item in enumerate(node.value):
                self.source.key_lines.setdefault(f"{key}[{i}]", _line(item))
                items.append(self.value(item, f"{key}[{i}]", above))
            return items
        return self.construct(node, key)

    def construct(self, node: Node, key: str) -> object:
        try:
            return cast(object, self.loader.construct_object(node, deep=True))
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            # Bad timestamps and unknown tags fail here rather than while parsing.
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            raise self.error(f"cannot read this value: {problem}", node, key) from None

    def pairs(self, node: MappingNode, key: str) -> dict[str, tuple[Node, Node]]:
        """{name: (key node, value node)}, duplicates refused and "<<" merges applied."""
        own: dict[str, Node] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = self.key_name(key_node, key)
            if name in own:
                raise self.error(
                    f'duplicate key "{name}" (first at line {_line(own[name])}); '
                    "give each key once",
                    key_node,
                    f"{key}.{name}" if key else name,
                )
            own[name] = key_node
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in self.merged_pairs(node, key, set()):
            pairs[self.key_name(key_node, key)] = (key_node, value_node)
        return pairs

    def merged_pairs(self, node: MappingNode, key: str, seen: set[int]) -> list[tuple[Node, Node]]:
        # Not yaml's flatten_mapping: that rewrites nodes in place, which would
        # hide the duplicate-key check from a mapping reached again via an alias.
        if id(node) in seen:
            raise self.error("a mapping merges itself", node, key)
        seen = seen | {id(node)}
        merged: list[tuple[Node, Node]] = []
        own: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            # Earlier sources win, so they go last: the dict built from this keeps the last.
            for source in reversed(sources):
                if not isinstance(source, MappingNode):
                    raise self.error('"<<" merges a mapping or a list of mappings', value_node, key)
                merged.extend(self.merged_pairs(source, key, seen))
        return merged + own

    def key_name(self, key_node: Node, key: str) -> str:
        name = self.construct(key_node, key) if isinstance(key_node, ScalarNode) else None
        if not isinstance(name, str):
            got = describe(name) if isinstance(key_node, ScalarNode) else _node_kind(key_node)
            raise self.error(f"keys must be strings, got {got}", key_node, key)
        return name


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "an empty list" if not node.value else "a list"
    return "a mapping" if isinstance(node, MappingNode) else "a value"
