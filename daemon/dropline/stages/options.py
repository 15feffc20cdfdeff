"""Reading a builtin stage's ``with:`` options, each checked at start-up.

A builtin takes its options through ``Options``: every getter checks type
and range and, when the value is wrong, raises a ConfigError naming the
file, the line of that very option, its dotted key and what is allowed.
``done()`` then refuses any option the builtin did not read, with the
closest valid name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ConfigError
from ..units import parse_duration, parse_size

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f'a string ("{value}")'
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return "nothing" if value is None else type(value).__name__


class Options:
    """The options of one builtin stage (or a mapping nested in them)."""

    def __init__(
        self,
        values: Mapping[str, Any],
        *,
        file: str,
        line: int,
        key: str,
        lines: Mapping[str, int] | None = None,
        prefix: str = "",
    ) -> None:
        self.values = values
        self.file = file
        self.line = line
        self.key = key  # e.g. pipelines[0].stages[1].with
        self.lines = lines or {}
        self.prefix = prefix  # the path of this mapping under "with:" ("" at the top)
        self._read: set[str] = set()

    # --- errors -------------------------------------------------------------

    def path(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> NoReturn:
        path = self.path(name)
        line = self.lines.get(path) or self.lines.get(self.prefix) or self.line
        raise ConfigError(message, file=self.file, line=line, key=f"{self.key}.{path}")

    def done(self) -> None:
        """Refuse any option that was not read (a typo, or one this builtin lacks)."""
        for name in self.values:
            if name not in self._read:
                known = sorted(self._read)
                close = difflib.get_close_matches(name, known, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ";"
                self.fail(name, f'unknown option "{name}"{hint} allowed: {", ".join(known)}')

    # --- getters --------------------------------------------------------------

    def has(self, name: str) -> bool:
        self._read.add(name)
        return name in self.values

    def raw(self, name: str, default: Any = None) -> Any:
        self._read.add(name)
        return self.values.get(name, default)

    def require(self, name: str, what: str) -> Any:
        self._read.add(name)
        if name not in self.values or self.values[name] is None:
            self.fail(name, f'missing option "{name}": {what}')
        return self.values[name]

    def string(self, name: str, default: str | None = None, *, what: str = "a string") -> str:
        value = self.require(name, what) if default is None else self.raw(name, default)
        if not isinstance(value, str) or not value:
            self.fail(name, f"expected {what}, got {_describe(value)}")
        return value

    def optional_string(self, name: str, *, what: str = "a string") -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(name, f"expected {what}, got {_describe(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"expected true or false, got {_describe(value)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(name, f"expected a whole number from {low} to {high}, got {_describe(value)}")
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        value = self.raw(name, default)
        if value not in choices:
            self.fail(name, f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return str(value)

    def duration(self, name: str, default: float) -> float:
        value = self.raw(name, default)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(name, f"expected a duration such as 10s or 2m: {exc}")

    def size(self, name: str, default: int) -> int:
        value = self.raw(name, default)
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(name, f"expected a size such as 64MiB: {exc}")

    def absolute_path(self, name: str, *, what: str = "an absolute path") -> Path:
        value = self.string(name, what=what)
        path = Path(value)
        if not path.is_absolute():
            self.fail(name, f'expected {what}, got the relative path "{value}"')
        return path

    def identifier(self, name: str, default: str | None = None) -> str:
        what = "an SQL identifier (letters, digits and _, not starting with a digit)"
        value = self.string(name, default, what=what)
        if not _IDENTIFIER.fullmatch(value):
            self.fail(name, f'expected {what}, got "{value}"')
        return value

    def string_list(self, name: str, *, what: str = "a list of strings") -> list[str]:
        value = self.raw(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(name, f"expected {what}, got {_describe(value)}")
        return list(value)

    def mapping(self, name: str, *, what: str = "a mapping") -> Options:
        value = self.raw(name, {})
        if not isinstance(value, Mapping):
            self.fail(name, f"expected {what}, got {_describe(value)}")
        return self.nested(value, self.path(name))

    def items(self, name: str, *, what: str = "a list of mappings") -> list[Options]:
        value = self.raw(name, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.fail(name, f"expected {what}, got {_describe(value)}")
        return [self.nested(v, f"{self.path(name)}[{i}]") for i, v in enumerate(value)]

    def nested(self, values: Mapping[str, Any], prefix: str) -> Options:
        return Options(
            values, file=self.file, line=self.line, key=self.key, lines=self.lines, prefix=prefix
        )


def sql_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None


__all__ = ["Options", "sql_identifier"]
