"""Value checks: one small class for each kind of value a key may hold.

A check is called with the plain value as read (source.py) and its Loc, and
returns the value converted (seconds, bytes, a Path, a tuple) or raises the
Loc's ConfigError saying what was written and what is allowed.  Sections
(a nested mapping, a list of them) are only named here: load.py walks them.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..units import DURATION_FORMS, SIZE_FORMS, parse_duration, parse_size

if TYPE_CHECKING:
    from .source import Loc

_S = TypeVar("_S", bound=str)
_T = TypeVar("_T")


def describe(value: object) -> str:
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
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} {value}"


def keys(names: Sequence[str]) -> str:
    return ", ".join(names)


def scalar(value: object, at: Loc, expected: str) -> object:
    """VALUE itself when it is no list or mapping."""
    if isinstance(value, list | dict):
        raise at.error(f"expected {expected}, got {describe(value)}")
    return value


def items(value: object, at: Loc, what: str) -> list[object]:
    if isinstance(value, list):
        return value
    raise at.error(f"expected {what}, got {describe(value)}")


def text(value: object, at: Loc, expected: str) -> str:
    value = scalar(value, at, expected)
    if not isinstance(value, str) or not value:
        raise at.error(f"expected {expected}, got {describe(value)}")
    return value


class IntRange:
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, value: object, at: Loc) -> int:
        expected = f"an integer from {self.low} to {self.high}"
        value = scalar(value, at, expected)
        # bool is an int to Python, but "workers: yes" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.error(f"expected {expected}, got {describe(value)}")
        if not self.low <= value <= self.high:
            raise at.error(f"expected {expected}, got {value}")
        return value


class Flag:
    def __call__(self, value: object, at: Loc) -> bool:
        value = scalar(value, at, "true or false")
        if not isinstance(value, bool):
            raise at.error(f"expected true or false, got {describe(value)}")
        return value


class Duration:
    def __init__(self, *, positive: bool) -> None:
        self.positive = positive

    def __call__(self, value: object, at: Loc) -> float:
        bound = "greater than 0" if self.positive else "0 or more"
        expected = f"a duration {bound}: {DURATION_FORMS}"
        value = scalar(value, at, expected)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise at.error(f"{exc}; expected {expected}") from None
        if self.positive and seconds <= 0:
            raise at.error(f"the duration must be greater than 0; expected {expected}")
        return seconds


class DurationOrNever:
    def __call__(self, value: object, at: Loc) -> float | None:
        expected = f'a duration 0 or more ({DURATION_FORMS}), or "never"'
        if scalar(value, at, expected) == "never":
            return None
        return Duration(positive=False)(value, at)


class Size:
    def __call__(self, value: object, at: Loc) -> int:
        expected = f"a size greater than 0: {SIZE_FORMS}"
        value = scalar(value, at, expected)
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise at.error(f"{exc}; expected {expected}") from None
        if size <= 0:
            raise at.error(f"the size must be greater than 0; expected {expected}")
        return size


class Choice(Generic[_S]):
    def __init__(self, choices: Sequence[_S]) -> None:
        self.choices = choices

    def __call__(self, value: object, at: Loc) -> _S:
        expected = "one of " + ", ".join(f'"{c}"' for c in self.choices)
        value = scalar(value, at, expected)
        for choice in self.choices:
            if value == choice:
                return choice
        raise at.error(f"expected {expected}, got {describe(value)}")


class Text:
    """A non-empty string."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, value: object, at: Loc) -> str:
        return text(value, at, self.expected)


class FilePath:
    """A path, relative ones taken from the configuration file's folder."""

    def __call__(self, value: object, at: Loc) -> Path:
        expected = "a path, absolute or relative to the configuration file's directory"
        written = text(value, at, expected)
        if "\0" in written:
            raise at.error(f"a path cannot contain a NUL character; expected {expected}")
        return at.source.base / written


_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RULE = "1 to 64 characters from letters, digits, '.', '_' and '-', not only dots"


class Name:
    def __call__(self, value: object, at: Loc) -> str:
        expected = f"a name of {_NAME_RULE}"
        value = scalar(value, at, expected)
        # "." and ".." pass the character rule but would name a directory's parent.
        if not isinstance(value, str) or not _NAME.fullmatch(value) or set(value) == {"."}:
            raise at.error(f"expected {expected}, got {describe(value)}")
        return value


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_IDENTIFIER_RULE = "an SQL identifier (letters, digits and _, not starting with a digit)"


def sql_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None


class Identifier:
    def __call__(self, value: object, at: Loc) -> str:
        name = text(value, at, _IDENTIFIER_RULE)
        if not sql_identifier(name):
            raise at.error(f"expected {_IDENTIFIER_RULE}, got {describe(name)}")
        return name


class AbsolutePath:
    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, value: object, at: Loc) -> Path:
        written = text(value, at, self.expected)
        if "\0" in written or not written.startswith("/"):
            raise at.error(f"expected {self.expected}, got the relative path {describe(written)}")
        return Path(written)


class Texts:
    """A list of non-empty strings; one string may be written without the list."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, value: object, at: Loc) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        found = items(value, at, self.expected)
        return tuple(text(item, at.item(i), "a string") for i, item in enumerate(found))


class OptionsMap:
    """A stage's free-form "with:" mapping, read-only once loaded."""

    def __call__(self, value: object, at: Loc) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise at.error(f"expected a mapping of options, got {describe(value)}")
        return types.MappingProxyType(value)


class FreeMap:
    """A mapping of names the stage defines itself; its values are checked by the stage."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, value: object, at: Loc) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise at.error(f"expected {self.expected}, got {describe(value)}")
        return types.MappingProxyType(value)


class Anything:
    """A value the stage reads itself (a schema: a file name or inline)."""

    def __call__(self, value: object, at: Loc) -> object:
        return value


class ChoiceList(Generic[_S]):
    """A list of distinct choices (possibly empty)."""

    def __init__(self, choices: Sequence[_S]) -> None:
        self.choices = choices

    def __call__(self, value: object, at: Loc) -> tuple[_S, ...]:
        found = items(value, at, f"a list of rules (of {keys(self.choices)}), or []")
        chosen: list[_S] = []
        for i, item in enumerate(found):
            choice = Choice(self.choices)(item, at.item(i))
            if choice in chosen:
                line = at.item(i).line
                raise at.error(f'"{choice}" is listed twice; give each rule once', line=line)
            chosen.append(choice)
        return tuple(chosen)


class Section(Generic[_T]):
    """A nested mapping built into CLS by the walker (load.py)."""

    __slots__ = ("cls",)

    def __init__(self, cls: type[_T]) -> None:
        self.cls = cls


class Sections(Generic[_T]):
    """A list of mappings, each built into CLS; WHAT names the list in errors."""

    __slots__ = ("cls", "non_empty", "what")

    def __init__(self, cls: type[_T], what: str, non_empty: bool = False) -> None:
        self.cls = cls
        self.what = what
        self.non_empty = non_empty
