"""Configuration: the YAML file loaded once into frozen, typed objects.

Nothing else in dropline reads YAML.  Every error is a ConfigError naming the
file, the line, the key, what was wrong and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import json
import keyword
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dropline.errors import ConfigError
from dropline.units import DURATION_FORMS, SIZE_FORMS, parse_duration, parse_size

StageKind = Literal["command", "python", "builtin"]
ArchiveLayout = Literal["flat", "daily"]
LogFormat = Literal["auto", "console", "json"]
Isolation = Literal["process", "thread"]
ISOLATIONS: tuple[Isolation, ...] = ("process", "thread")

DEFAULT_IGNORE: tuple[str, ...] = (".*", "*.tmp", "*.part", "*.partial", "*~")


@dataclass(frozen=True)
class StageConfig:
    """One stage of a pipeline, exactly one of command, python or builtin."""

    name: str
    kind: StageKind
    command: tuple[str, ...] = ()  # argv; "{path}" etc. substituted per file
    python: str = ""  # "module:function"
    builtin: str = ""  # a name from dropline.stages.builtin.BUILTINS
    options: Mapping[str, Any] = field(default_factory=dict)  # the "with:" mapping
    timeout: float = 300.0  # seconds
    retries: int = 3  # attempts after the first
    backoff_initial: float = 1.0  # seconds before the first retry
    backoff_max: float = 300.0  # cap on any one delay
    idempotent: bool = True
    modifies: bool = False  # the stage rewrites the working file on purpose
    isolation: Isolation = "process"  # python stages: in a worker process, or a thread
    memory_limit: int = 1024**3  # python stages in a process: address-space limit
    line: int = 0  # where the stage is declared, for later error messages
    command_line: int = 0  # where its program (command[0]) is written
    # The line of every key under "with:" ("columns[2].type" -> 14): a builtin's
    # option error names the line of the very option.
    option_lines: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineConfig:
    """A named pipeline: the globs it matches and its stages in order."""

    name: str
    match: tuple[str, ...]
    stages: tuple[StageConfig, ...] = ()
    line: int = 0
    match_line: int = 0  # where "match" is written
    # Run once when a file has failed, before it moves to failed/ (a webhook, say):
    # their own failures are recorded and logged, never change the outcome.
    on_failure: tuple[StageConfig, ...] = ()


# Tools whose temporary and auxiliary names are known (toolnames.py has the rules).
TOOL_RULES: tuple[str, ...] = ("sqlite", "sed", "vim", "office", "python")


@dataclass(frozen=True)
class ToolFilesConfig:
    """Names common tools write beside a file: when they may be claimed (toolnames.py)."""

    rules: tuple[str, ...] = TOOL_RULES  # [] claims such names as soon as any other
    grace: float = 2.0  # a temporary-shaped name is claimed only if unchanged this long
    held_warning: float = 300.0  # a name held longer is logged once and shown by status
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics: an HTTP endpoint, a textfile for node exporter, or both."""

    listen: tuple[str, int] | None = None  # (host, port); an IPv6 host without brackets
    textfile: Path | None = None  # absolute, ending in .prom
    interval: float = 15.0  # seconds between rewrites of the textfile
    # Line of each key under metrics:, for errors found after loading.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def address(self) -> str:
        """The listen address as written: host:port, or [host]:port for IPv6."""
        if self.listen is None:
            return ""
        host, port = self.listen
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Config:
    """The whole configuration, validated."""

    path: Path  # the file it was read from
    data_dir: Path
    state_db: Path
    pipelines: tuple[PipelineConfig, ...]
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    tool_files: ToolFilesConfig = ToolFilesConfig()
    settle_time: float = 2.0
    rescan_interval: float = 60.0
    # Files inside folders dropped into incoming/ are processed (off: a folder is refused).
    recursive: bool = True
    # An emptied folder in incoming/ is removed once unchanged this long; None: never.
    remove_empty_folders_after: float | None = 60.0
    archive_layout: ArchiveLayout = "daily"
    max_file_size: int = 4 * 1024**3
    min_free_space: int = 64 * 1024**2  # below this on any folder's filesystem, claiming pauses
    workers: int = 4
    max_in_flight: int = 1024
    batch_size: int = 256
    stop_timeout: float = 1.5
    pipelines_dir: Path = Path("/opt/automation/pipelines")
    log_format: LogFormat = "auto"
    metrics: MetricsConfig | None = None  # None: no metrics (the default)
    # Line of each top-level key in the file, so that checks made after loading
    # (check_paths) can still point the operator at the right line.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def incoming(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def working(self) -> Path:
        return self.data_dir / "working"

    @property
    def archive(self) -> Path:
        return self.data_dir / "archive"

    @property
    def failed(self) -> Path:
        return self.data_dir / "failed"


# ---------------------------------------------------------------------------
# Loading

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)

TOP_KEYS: tuple[str, ...] = (
    "data_dir",
    "state_db",
    "pipelines",
    "ignore",
    "tool_files",
    "settle_time",
    "rescan_interval",
    "recursive",
    "remove_empty_folders_after",
    "archive_layout",
    "max_file_size",
    "min_free_space",
    "workers",
    "max_in_flight",
    "batch_size",
    "stop_timeout",
    "pipelines_dir",
    "log_format",
    "metrics",
)
PIPELINE_KEYS: tuple[str, ...] = ("name", "match", "stages", "on_failure")
STAGE_KEYS: tuple[str, ...] = (
    "name",
    "command",
    "python",
    "builtin",
    "with",
    "timeout",
    "retries",
    "backoff",
    "idempotent",
    "modifies",
    "isolation",
    "memory_limit",
)
STAGE_KINDS: tuple[StageKind, ...] = ("command", "python", "builtin")
ARCHIVE_LAYOUTS: tuple[ArchiveLayout, ...] = ("flat", "daily")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")
BACKOFF_KEYS: tuple[str, ...] = ("initial", "max")
METRICS_KEYS: tuple[str, ...] = ("listen", "textfile", "interval")
TOOL_FILES_KEYS: tuple[str, ...] = ("rules", "grace", "held_warning")

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RULE = "1 to 64 characters from letters, digits, '.', '_' and '-', not only dots"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_GLOB_RULE = 'a glob on the file name such as "*.csv" or "report-[0-9]*" (no "/")'
_ARGV_EXAMPLE = '["sha256sum", "{path}"]'

# The placeholders a command's arguments may hold (stages/command.py substitutes them).
PLACEHOLDERS: tuple[str, ...] = ("path", "name", "item_id", "pipeline", "stage")
# What reads as one: "{word}".  Not after "$", "%", "@" or "#", where braces belong to
# the program's own language (the shell's "${HOME}", curl's "%{http_code}").
_PLACEHOLDER_LIKE = re.compile(r"(?<![$%@#])\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDERS_ALLOWED = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
_LISTEN_RULE = (
    'an address "host:port" such as "127.0.0.1:9464", "localhost:9464" or "[::1]:9464" '
    "(host an IP address or localhost, IPv6 in brackets; port 1 to 65535)"
)
_TEXTFILE_RULE = "an absolute path ending in .prom, e.g. /var/lib/node_exporter/dropline.prom"

# Defaults live once, in the dataclasses; these instances only expose them.
_CONFIG_DEFAULTS = Config(path=Path(), data_dir=Path(), state_db=Path(), pipelines=())
_STAGE_DEFAULTS = StageConfig(name="", kind="builtin")
_METRICS_DEFAULTS = MetricsConfig()
_TOOL_FILES_DEFAULTS = ToolFilesConfig()
# One read-only empty mapping, so that no stage holds a dict someone could mutate.
_NO_OPTIONS: Mapping[str, Any] = types.MappingProxyType({})


def load_config(path: Path | str) -> Config:
    """Read, validate and return the configuration in the YAML file `path`.

    Relative paths in the file are taken relative to the file's directory.
    Every problem, from an unreadable file to a bad glob, raises ConfigError
    naming the file, the line, the key, what was wrong and what is allowed.
    """
    config_path = Path(path).absolute()
    file = str(config_path)
    text = _read_text(config_path)
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
        return _Builder(file, config_path.parent, loader).config(root, config_path)
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


def _keys(names: Sequence[str]) -> str:
    return ", ".join(names)


def _describe(value: object) -> str:
    """Say what the operator wrote, for "expected X, got Y"."""
    if value is None:
        return "an empty value (null)"
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"a string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} {value}"


def _describe_node(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "an empty list" if not node.value else "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a value"


def _glob_problem(pattern: str) -> str | None:
    """Return why `pattern` is not a usable file-name glob, or None if it is."""
    if not pattern:
        return "an empty glob matches nothing"
    if "/" in pattern:
        return 'a glob matches the file name only, so it cannot contain "/"'
    if "\0" in pattern:
        return "a glob cannot contain a NUL character"
    i = 0
    while i < len(pattern):
        if pattern[i] != "[":
            i += 1
            continue
        # fnmatch's rule: a "]" right after "[" or "[!" is a literal member.
        j = i + 1
        if j < len(pattern) and pattern[j] == "!":
            j += 1
        if j < len(pattern) and pattern[j] == "]":
            j += 1
        while j < len(pattern) and pattern[j] != "]":
            j += 1
        if j >= len(pattern):
            # fnmatch would silently match "[" literally, which is never what was meant.
            return f'the "[" at position {i + 1} has no closing "]"'
        i = j + 1
    return None


def _python_ref_ok(ref: str) -> bool:
    module, sep, function = ref.partition(":")
    if not sep:
        return False
    parts = [*module.split("."), *function.split(".")]
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def _record_lines(node: Node, prefix: str, into: dict[str, int]) -> None:
    """The line of every key and item under NODE, by dotted path."""
    if prefix and prefix not in into:
        into[prefix] = _line(node)
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                name = str(key_node.value)
                into[f"{prefix}.{name}" if prefix else name] = _line(key_node)
                _record_lines(value_node, f"{prefix}.{name}" if prefix else name, into)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, f"{prefix}[{i}]", into)


class _Builder:
    """Walks the composed YAML node tree, so that every value has a line."""

    def __init__(self, file: str, base: Path, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.base = base
        self.loader = loader

    def error(self, message: str, node: Node | None, key: str) -> ConfigError:
        line = _line(node) if node is not None else 0
        return ConfigError(message, file=self.file, line=line, key=key)

    # -- structure ----------------------------------------------------------

    def construct(self, node: Node, key: str) -> object:
        try:
            return cast(object, self.loader.construct_object(node, deep=True))
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            # Bad timestamps and unknown tags fail here rather than while parsing.
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            raise self.error(f"cannot read this value: {problem}", node, key) from None

    def mapping(
        self,
        node: Node,
        key: str,
        allowed: Sequence[str] | None,
        required: Sequence[str],
        what: str,
    ) -> dict[str, tuple[Node, Node]]:
        """Return {key: (key node, value node)} after checking keys.

        `allowed` None means any string key (the free-form `with` options).
        Unknown, duplicate and missing keys are errors; YAML merge keys ("<<")
        are applied, with the mapping's own keys taking precedence.
        """
        if not isinstance(node, MappingNode):
            got = _describe_node(node)
            if isinstance(node, ScalarNode):
                got = _describe(self.construct(node, key))
            raise self.error(f"expected {what}, got {got}", node, key)
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
        # Checked after the merge too, so that a key merged in from an anchor
        # elsewhere is held to the same rules as one written here.
        for key_node, value_node in self.merged_pairs(node, key, set()):
            name = self.key_name(key_node, key)
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ";"
                raise self.error(
                    f'unknown key "{name}"{hint} allowed: {_keys(allowed)}',
                    key_node,
                    f"{key}.{name}" if key else name,
                )
            pairs[name] = (key_node, value_node)
        for name in required:
            if name not in pairs:
                sub = f"{key}.{name}" if key else name
                raise self.error(
                    f'missing required key "{name}"; required here: {_keys(required)}', node, sub
                )
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
            got = _describe(name) if isinstance(key_node, ScalarNode) else _describe_node(key_node)
            raise self.error(f"keys must be strings, got {got}", key_node, key)
        return name

    def sequence(self, node: Node, key: str, what: str) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        got = _describe(self.scalar(node, key, what))
        raise self.error(f"expected {what}, got {got}", node, key)

    def scalar(self, node: Node, key: str, expected: str) -> object:
        if not isinstance(node, ScalarNode):
            raise self.error(f"expected {expected}, got {_describe_node(node)}", node, key)
        return self.construct(node, key)

    # -- typed values -------------------------------------------------------

    def integer(self, node: Node, key: str, low: int, high: int) -> int:
        expected = f"an integer from {low} to {high}"
        value = self.scalar(node, key, expected)
        # bool is an int to Python, but "workers: yes" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected {expected}, got {_describe(value)}", node, key)
        if not low <= value <= high:
            raise self.error(f"expected {expected}, got {value}", node, key)
        return value

    def boolean(self, node: Node, key: str) -> bool:
        value = self.scalar(node, key, "true or false")
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {_describe(value)}", node, key)
        return value

    def duration(self, node: Node, key: str, *, positive: bool) -> float:
        bound = "greater than 0" if positive else "0 or more"
        expected = f"a duration {bound}: {DURATION_FORMS}"
        value = self.scalar(node, key, expected)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(f"{exc}; expected {expected}", node, key) from None
        if positive and seconds <= 0:
            raise self.error(f"the duration must be greater than 0; expected {expected}", node, key)
        return seconds

    def duration_or_never(self, node: Node, key: str) -> float | None:
        expected = f'a duration 0 or more ({DURATION_FORMS}), or "never"'
        if self.scalar(node, key, expected) == "never":
            return None
        return self.duration(node, key, positive=False)

    def size(self, node: Node, key: str) -> int:
        expected = f"a size greater than 0: {SIZE_FORMS}"
        value = self.scalar(node, key, expected)
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise self.error(f"{exc}; expected {expected}", node, key) from None
        if size <= 0:
            raise self.error(f"the size must be greater than 0; expected {expected}", node, key)
        return size

    def choice(self, node: Node, key: str, choices: Sequence[_S]) -> _S:
        expected = "one of " + ", ".join(f'"{c}"' for c in choices)
        value = self.scalar(node, key, expected)
        for choice in choices:
            if value == choice:
                return choice
        raise self.error(f"expected {expected}, got {_describe(value)}", node, key)

    def string(self, node: Node, key: str, expected: str) -> str:
        value = self.scalar(node, key, expected)
        if not isinstance(value, str) or not value:
            raise self.error(f"expected {expected}, got {_describe(value)}", node, key)
        return value

    def path(self, node: Node, key: str) -> Path:
        expected = "a path, absolute or relative to the configuration file's directory"
        value = self.string(node, key, expected)
        if "\0" in value:
            raise self.error(
                f"a path cannot contain a NUL character; expected {expected}", node, key
            )
        return self.base / value

    def name(self, node: Node, key: str) -> str:
        expected = f"a name of {_NAME_RULE}"
        value = self.scalar(node, key, expected)
        if not isinstance(value, str):
            raise self.error(f"expected {expected}, got {_describe(value)}", node, key)
        # "." and ".." pass the character rule but would name a directory's parent.
        if not _NAME.fullmatch(value) or set(value) == {"."}:
            raise self.error(f"expected {expected}, got {_describe(value)}", node, key)
        return value

    def glob(self, node: Node, key: str) -> str:
        value = self.scalar(node, key, _GLOB_RULE)
        if not isinstance(value, str):
            raise self.error(f"expected {_GLOB_RULE}, got {_describe(value)}", node, key)
        problem = _glob_problem(value)
        if problem is not None:
            shown = json.dumps(value, ensure_ascii=False)
            raise self.error(f"bad glob {shown}: {problem}; expected {_GLOB_RULE}", node, key)
        return value

    def globs(self, node: Node, key: str, *, single_ok: bool, empty_ok: bool) -> tuple[str, ...]:
        if single_ok and isinstance(node, ScalarNode):
            return (self.glob(node, key),)
        what = "a glob or a non-empty list of globs" if single_ok else "a list of globs"
        items = self.sequence(node, key, what)
        if not items and not empty_ok:
            raise self.error(f"expected {what}, got an empty list", node, key)
        return tuple(self.glob(item, f"{key}[{i}]") for i, item in enumerate(items))

    def optional(
        self,
        pairs: Mapping[str, tuple[Node, Node]],
        name: str,
        key: str,
        parse: Callable[[Node, str], _T],
        default: _T,
    ) -> _T:
        pair = pairs.get(name)
        if pair is None:
            return default
        return parse(pair[1], f"{key}.{name}" if key else name)

    # -- the three levels ---------------------------------------------------

    def config(self, root: Node, config_path: Path) -> Config:
        top = self.mapping(
            root,
            "",
            TOP_KEYS,
            ("data_dir", "state_db", "pipelines"),
            f"the top level to be a mapping of keys ({_keys(TOP_KEYS)})",
        )
        d = _CONFIG_DEFAULTS

        def opt(name: str, parse: Callable[[Node, str], _T], default: _T) -> _T:
            return self.optional(top, name, "", parse, default)

        def duration(positive: bool) -> Callable[[Node, str], float]:
            return lambda n, k: self.duration(n, k, positive=positive)

        def integer(low: int, high: int) -> Callable[[Node, str], int]:
            return lambda n, k: self.integer(n, k, low, high)

        return Config(
            path=config_path,
            data_dir=self.path(top["data_dir"][1], "data_dir"),
            state_db=self.path(top["state_db"][1], "state_db"),
            pipelines=self.pipelines(top["pipelines"][1]),
            ignore=opt(
                "ignore", lambda n, k: self.globs(n, k, single_ok=False, empty_ok=True), d.ignore
            ),
            tool_files=opt("tool_files", self.tool_files, d.tool_files),
            settle_time=opt("settle_time", duration(False), d.settle_time),
            rescan_interval=opt("rescan_interval", duration(True), d.rescan_interval),
            recursive=opt("recursive", self.boolean, d.recursive),
            remove_empty_folders_after=opt(
                "remove_empty_folders_after", self.duration_or_never, d.remove_empty_folders_after
            ),
            archive_layout=opt(
                "archive_layout", lambda n, k: self.choice(n, k, ARCHIVE_LAYOUTS), d.archive_layout
            ),
            max_file_size=opt("max_file_size", self.size, d.max_file_size),
            min_free_space=opt("min_free_space", self.size, d.min_free_space),
            workers=opt("workers", integer(1, 256), d.workers),
            max_in_flight=opt("max_in_flight", integer(1, 100_000), d.max_in_flight),
            batch_size=opt("batch_size", integer(1, 100_000), d.batch_size),
            stop_timeout=opt("stop_timeout", duration(False), d.stop_timeout),
            pipelines_dir=opt("pipelines_dir", self.path, d.pipelines_dir),
            log_format=opt("log_format", lambda n, k: self.choice(n, k, LOG_FORMATS), d.log_format),
            metrics=opt("metrics", self.metrics, d.metrics),
            lines=types.MappingProxyType({name: _line(pair[0]) for name, pair in top.items()}),
        )

    def pipelines(self, node: Node) -> tuple[PipelineConfig, ...]:
        what = "a non-empty list of pipelines"
        items = self.sequence(node, "pipelines", what)
        if not items:
            raise self.error(f"expected {what}, got an empty list", node, "pipelines")
        result: list[PipelineConfig] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(items):
            key = f"pipelines[{i}]"
            pipeline = self.pipeline(item, key)
            if pipeline.name in first_line:
                raise self.error(
                    f'duplicate pipeline name "{pipeline.name}": declared at line '
                    f"{first_line[pipeline.name]} and again at line {pipeline.line}; "
                    "each pipeline needs its own name",
                    item,
                    f"{key}.name",
                )
            first_line[pipeline.name] = pipeline.line
            result.append(pipeline)
        return tuple(result)

    def pipeline(self, node: Node, key: str) -> PipelineConfig:
        pairs = self.mapping(
            node,
            key,
            PIPELINE_KEYS,
            ("name", "match"),
            f"a pipeline mapping ({_keys(PIPELINE_KEYS)})",
        )
        name = self.name(pairs["name"][1], f"{key}.name")
        match = self.globs(pairs["match"][1], f"{key}.match", single_ok=True, empty_ok=False)
        first_line: dict[str, int] = {}
        stages = self.stage_list(pairs, "stages", key, name, first_line)
        on_failure = self.stage_list(pairs, "on_failure", key, name, first_line)
        return PipelineConfig(
            name=name,
            match=match,
            stages=tuple(stages),
            line=_line(node),
            match_line=_line(pairs["match"][1]),
            on_failure=tuple(on_failure),
        )

    def stage_list(
        self,
        pairs: dict[str, tuple[Node, Node]],
        field_name: str,
        key: str,
        pipeline: str,
        first_line: dict[str, int],
    ) -> list[StageConfig]:
        """The stages under FIELD_NAME; a name may appear once in the whole pipeline."""
        stages: list[StageConfig] = []
        if field_name not in pairs:
            return stages
        items = self.sequence(pairs[field_name][1], f"{key}.{field_name}", "a list of stages")
        for i, item in enumerate(items):
            stage_key = f"{key}.{field_name}[{i}]"
            stage = self.stage(item, stage_key)
            if stage.name in first_line:
                raise self.error(
                    f'duplicate stage name "{stage.name}" in pipeline "{pipeline}": declared at '
                    f"line {first_line[stage.name]} and again at line {stage.line}; "
                    "each stage of a pipeline needs its own name",
                    item,
                    f"{stage_key}.name",
                )
            first_line[stage.name] = stage.line
            stages.append(stage)
        return stages

    def stage(self, node: Node, key: str) -> StageConfig:
        pairs = self.mapping(
            node,
            key,
            STAGE_KEYS,
            ("name",),
            "a stage mapping with a name and one of command, python or builtin",
        )
        name = self.name(pairs["name"][1], f"{key}.name")
        kinds = [kind for kind in STAGE_KINDS if kind in pairs]
        if not kinds:
            raise self.error(
                "a stage needs exactly one of command, python or builtin; it has none",
                node,
                key,
            )
        if len(kinds) > 1:
            found = " and ".join(f"{kind} (line {_line(pairs[kind][0])})" for kind in kinds)
            raise self.error(
                f"a stage needs exactly one of command, python or builtin; it has {found}",
                pairs[kinds[1]][0],
                f"{key}.{kinds[1]}",
            )
        kind = kinds[0]
        kind_node = pairs[kind][1]
        kind_key = f"{key}.{kind}"
        command: tuple[str, ...] = ()
        command_node: Node | None = None
        python = builtin = ""
        if kind == "command":
            command = self.command(kind_node, kind_key)
            command_node = cast(SequenceNode, kind_node).value[0]
        elif kind == "python":
            expected = 'a reference "module.path:function" such as "ingest.stages:validate"'
            python = self.string(kind_node, kind_key, expected)
            if not _python_ref_ok(python):
                raise self.error(
                    f"expected {expected}, got {_describe(python)}", kind_node, kind_key
                )
        else:
            builtin = self.string(kind_node, kind_key, "the name of a builtin stage")
        options: Mapping[str, Any] = _NO_OPTIONS
        option_lines: dict[str, int] = {}
        if "with" in pairs:
            if kind == "command":
                raise self.error(
                    '"with" is only allowed with builtin or python stages; '
                    "a command takes its arguments in its argv list",
                    pairs["with"][0],
                    f"{key}.with",
                )
            options = self.options(pairs["with"][1], f"{key}.with")
            _record_lines(pairs["with"][1], "", option_lines)
        for only_python in ("isolation", "memory_limit"):
            if only_python in pairs and kind != "python":
                raise self.error(
                    f'"{only_python}" applies to python stages only',
                    pairs[only_python][0],
                    f"{key}.{only_python}",
                )
        backoff_initial, backoff_max = _STAGE_DEFAULTS.backoff_initial, _STAGE_DEFAULTS.backoff_max
        if "backoff" in pairs:
            backoff_initial, backoff_max = self.backoff(pairs["backoff"][1], f"{key}.backoff")
        return StageConfig(
            name=name,
            kind=kind,
            command=command,
            python=python,
            builtin=builtin,
            options=options,
            timeout=self.optional(
                pairs,
                "timeout",
                key,
                lambda n, k: self.duration(n, k, positive=True),
                _STAGE_DEFAULTS.timeout,
            ),
            retries=self.optional(
                pairs,
                "retries",
                key,
                lambda n, k: self.integer(n, k, 0, 100),
                _STAGE_DEFAULTS.retries,
            ),
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            modifies=self.optional(pairs, "modifies", key, self.boolean, _STAGE_DEFAULTS.modifies),
            isolation=self.optional(
                pairs,
                "isolation",
                key,
                lambda n, k: self.choice(n, k, ISOLATIONS),
                _STAGE_DEFAULTS.isolation,
            ),
            memory_limit=self.optional(
                pairs, "memory_limit", key, self.size, _STAGE_DEFAULTS.memory_limit
            ),
            idempotent=self.optional(
                pairs, "idempotent", key, self.boolean, _STAGE_DEFAULTS.idempotent
            ),
            line=_line(node),
            command_line=_line(command_node) if command_node is not None else 0,
            option_lines=types.MappingProxyType(option_lines),
        )

    def command(self, node: Node, key: str) -> tuple[str, ...]:
        what = f"an argv list, never a shell string, e.g. {_ARGV_EXAMPLE}"
        if isinstance(node, ScalarNode):
            value = self.construct(node, key)
            raise self.error(f"expected {what}, got {_describe(value)}", node, key)
        items = self.sequence(node, key, what)
        if not items:
            raise self.error(f"expected {what}, got an empty list", node, key)
        argv: list[str] = []
        for i, item in enumerate(items):
            arg = self.scalar(item, f"{key}[{i}]", "a string")
            if not isinstance(arg, str):
                # YAML reads "-n 10" as the integer 10; a quote says what was meant.
                raise self.error(
                    f"expected a string, got {_describe(arg)}; quote it in the argv list",
                    item,
                    f"{key}[{i}]",
                )
            self.placeholders(arg, item, f"{key}[{i}]")
            argv.append(arg)
        if not argv[0]:
            raise self.error("expected a program name, got an empty string", items[0], f"{key}[0]")
        return tuple(argv)

    def placeholders(self, arg: str, node: Node, key: str) -> None:
        """An unknown "{word}" would reach the program as it is, for every file."""
        for found in _PLACEHOLDER_LIKE.finditer(arg):
            word = found.group(1)
            if word in PLACEHOLDERS:
                continue
            close = difflib.get_close_matches(word.lower(), PLACEHOLDERS, n=1)
            hint = f'; did you mean "{{{close[0]}}}"?' if close else ";"
            raise self.error(
                f'unknown placeholder "{{{word}}}"{hint} allowed: {_PLACEHOLDERS_ALLOWED}; '
                f'braces meant for the program itself (awk\'s "{{print}}") take a space: '
                f'"{{ {word} }}"',
                node,
                key,
            )

    def options(self, node: Node, key: str) -> Mapping[str, Any]:
        pairs = self.mapping(node, key, allowed=None, required=(), what="a mapping of options")
        built: dict[str, Any] = {}
        for name, (_key_node, value_node) in pairs.items():
            # deepcopy because YAML aliases hand out one shared object to every use.
            built[name] = copy.deepcopy(self.construct(value_node, f"{key}.{name}"))
        return types.MappingProxyType(built)

    def backoff(self, node: Node, key: str) -> tuple[float, float]:
        pairs = self.mapping(
            node, key, BACKOFF_KEYS, (), "a mapping with initial and max durations"
        )
        initial = self.optional(
            pairs,
            "initial",
            key,
            lambda n, k: self.duration(n, k, positive=False),
            _STAGE_DEFAULTS.backoff_initial,
        )
        most = self.optional(
            pairs,
            "max",
            key,
            lambda n, k: self.duration(n, k, positive=True),
            _STAGE_DEFAULTS.backoff_max,
        )
        if initial > most:
            where = pairs["initial"][1] if "initial" in pairs else node
            raise self.error(
                f"initial ({initial:g}s) is longer than max ({most:g}s); "
                "expected initial no longer than max",
                where,
                f"{key}.initial",
            )
        return initial, most

    def metrics(self, node: Node, key: str) -> MetricsConfig:
        what = "a mapping with listen, textfile or both (and interval)"
        pairs = self.mapping(node, key, METRICS_KEYS, (), what)
        if "listen" not in pairs and "textfile" not in pairs:
            raise self.error(
                "metrics needs listen (an HTTP endpoint), textfile (for node exporter) "
                "or both; leave metrics out to turn them off",
                node,
                key,
            )
        if "interval" in pairs and "textfile" not in pairs:
            raise self.error(
                '"interval" applies to textfile only (the HTTP endpoint is always current)',
                pairs["interval"][0],
                f"{key}.interval",
            )
        return MetricsConfig(
            listen=self.optional(pairs, "listen", key, self.listen, None),
            textfile=self.optional(pairs, "textfile", key, self.textfile, None),
            interval=self.optional(
                pairs,
                "interval",
                key,
                lambda n, k: self.duration(n, k, positive=True),
                _METRICS_DEFAULTS.interval,
            ),
            lines=types.MappingProxyType({name: _line(pair[0]) for name, pair in pairs.items()}),
        )

    def tool_files(self, node: Node, key: str) -> ToolFilesConfig:
        what = f"a mapping with {_keys(TOOL_FILES_KEYS)}"
        pairs = self.mapping(node, key, TOOL_FILES_KEYS, (), what)
        d = _TOOL_FILES_DEFAULTS
        return ToolFilesConfig(
            rules=self.optional(pairs, "rules", key, self.tool_rules, d.rules),
            grace=self.optional(
                pairs, "grace", key, lambda n, k: self.duration(n, k, positive=False), d.grace
            ),
            held_warning=self.optional(
                pairs,
                "held_warning",
                key,
                lambda n, k: self.duration(n, k, positive=True),
                d.held_warning,
            ),
            lines=types.MappingProxyType({name: _line(pair[0]) for name, pair in pairs.items()}),
        )

    def tool_rules(self, node: Node, key: str) -> tuple[str, ...]:
        items = self.sequence(node, key, f"a list of rules (of {_keys(TOOL_RULES)}), or []")
        rules: list[str] = []
        for i, item in enumerate(items):
            rule = self.choice(item, f"{key}[{i}]", TOOL_RULES)
            if rule in rules:
                raise self.error(f'"{rule}" is listed twice; give each rule once', item, key)
            rules.append(rule)
        return tuple(rules)

    def listen(self, node: Node, key: str) -> tuple[str, int]:
        if isinstance(node, SequenceNode):
            # listen: [::1]:9464 unquoted is YAML's flow list, not an address.
            raise self.error(
                f'expected {_LISTEN_RULE}, got a list; quote it: "[::1]:9464"', node, key
            )
        value = self.scalar(node, key, _LISTEN_RULE)
        if not isinstance(value, str):
            raise self.error(f"expected {_LISTEN_RULE}, got {_describe(value)}", node, key)
        if value.startswith("["):
            host, sep, port_text = value[1:].partition("]:")
            bracketed = True
        else:
            host, sep, port_text = value.rpartition(":")
            bracketed = False
        if not sep or not host:
            raise self.error(f"expected {_LISTEN_RULE}, got {_describe(value)}", node, key)
        if not bracketed and ":" in host:
            raise self.error(
                f"an IPv6 address needs brackets; expected {_LISTEN_RULE}, got {_describe(value)}",
                node,
                key,
            )
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise self.error(
                f"the port must be a number from 1 to 65535; expected {_LISTEN_RULE}, "
                f"got {_describe(value)}",
                node,
                key,
            )
        if host != "localhost" or bracketed:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or bracketed != (address.version == 6):
                raise self.error(
                    f"the host must be an IP address or localhost (no other host names); "
                    f"expected {_LISTEN_RULE}, got {_describe(value)}",
                    node,
                    key,
                )
        return host, int(port_text)

    def textfile(self, node: Node, key: str) -> Path:
        value = self.string(node, key, _TEXTFILE_RULE)
        if "\0" in value or not value.startswith("/") or not value.endswith(".prom"):
            raise self.error(f"expected {_TEXTFILE_RULE}, got {_describe(value)}", node, key)
        if value.endswith("/.prom"):
            raise self.error(
                f"expected {_TEXTFILE_RULE}, got {_describe(value)}; "
                "node exporter skips hidden files",
                node,
                key,
            )
        return Path(value)


# ---------------------------------------------------------------------------
# Checking the host

SPOOL_DIRS: tuple[str, ...] = ("incoming", "working", "archive", "failed")


def check_paths(config: Config) -> None:
    """Check that data_dir and state_db are usable, creating the spool folders.

    data_dir must be an existing directory dropline can write to; its
    incoming/, working/, archive/ and failed/ are created if missing.  The
    directory of state_db must exist and be writable (SQLite puts its journal
    beside the database), and state_db, if it exists, must be a regular file
    dropline can read and write.  Problems raise ConfigError pointing at the
    line of the key in the configuration file.
    """
    file = str(config.path)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, line=config.lines.get(key, 0), key=key)

    data_dir = config.data_dir
    if not data_dir.exists():
        raise fail("data_dir", f"{data_dir} does not exist; expected an existing directory")
    if not data_dir.is_dir():
        raise fail("data_dir", f"{data_dir} is not a directory; expected a directory")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise fail(
            "data_dir", f"{data_dir} is not writable; expected a directory dropline can write to"
        )
    for sub in SPOOL_DIRS:
        folder = data_dir / sub
        try:
            # No chmod afterwards: group access to incoming/ is the operator's
            # (or tmpfiles.d's) decision, and the umask is respected.
            folder.mkdir(mode=0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise fail("data_dir", f"cannot create {folder}: {exc.strerror}") from None
        if not folder.is_dir():
            raise fail("data_dir", f"{folder} is not a directory; expected the spool folder {sub}/")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise fail(
                "data_dir", f"{folder} is not writable; expected a directory dropline can write to"
            )

    state_db = config.state_db
    parent = state_db.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise fail(
            "state_db",
            f"the directory of {state_db}, {parent}, {problem}; expected an existing directory",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(
            "state_db",
            f"{parent} is not writable; SQLite needs to create files beside {state_db.name}",
        )
    if state_db.exists() or state_db.is_symlink():
        if not state_db.is_file():
            raise fail(
                "state_db", f"{state_db} exists but is not a regular file; expected a database file"
            )
        if not os.access(state_db, os.R_OK | os.W_OK):
            raise fail("state_db", f"{state_db} is not readable and writable by dropline")

    if config.metrics is not None and config.metrics.textfile is not None:
        _check_textfile(config, config.metrics)


def _check_textfile(config: Config, metrics: MetricsConfig) -> None:
    """The textfile is written as a temporary file beside it, then renamed over it."""
    assert metrics.textfile is not None
    textfile, folder = metrics.textfile, metrics.textfile.parent

    def fail(message: str) -> ConfigError:
        line = metrics.lines.get("textfile", 0)
        return ConfigError(message, file=str(config.path), line=line, key="metrics.textfile")

    if not folder.is_dir():
        problem = "is not a directory" if folder.exists() else "does not exist"
        raise fail(
            f"the directory of {textfile}, {folder}, {problem}; expected an existing directory"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise fail(
            f"{folder} is not writable; dropline writes {textfile.name} there through "
            "a temporary file and a rename"
        )
    if (textfile.exists() or textfile.is_symlink()) and not textfile.is_file():
        raise fail(f"{textfile} exists but is not a regular file; expected a file dropline owns")
