"""How a configuration key is declared: once, as a dataclass field.

``key(check, default=...)`` names the value check (values.py), the default
and the YAML name when it differs from the field's; ``derived(...)`` marks a
field the walker fills from where things were written (lines, the stage's
kind).  Rules between keys are small objects in a section's ``RULES``:
presence rules run on the keys written, before any value is checked, and
value rules on the built section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, field
from typing import TYPE_CHECKING, Any

from .values import Section, Sections

if TYPE_CHECKING:
    from .source import Loc


# A value check (values.py), or a nested section or list of them for the walker.
Check = Callable[[object, "Loc"], Any] | Section[Any] | Sections[Any]


class Key:
    __slots__ = ("check", "name", "required")

    def __init__(self, check: Check, name: str, required: bool) -> None:
        self.check = check
        self.name = name  # "" : the field's own name
        self.required = required


class Derived:
    __slots__ = ("arg", "what")

    def __init__(self, what: str, arg: Any = None) -> None:
        self.what = what  # "line", "key_lines", "lines_under", "line_of" or "present"
        self.arg = arg


def key(
    check: Check,
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    name: str = "",
) -> Any:
    """A key read from the file: no default and no factory means it is required."""
    required = default is MISSING and default_factory is None
    meta = {"key": Key(check, name, required)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def derived(what: str, arg: Any = None, *, default: Any = 0, compare: bool = True) -> Any:
    """A field filled by the walker from the file's layout, never written as a key."""
    meta = {"derived": Derived(what, arg)}
    if isinstance(default, dict):
        return field(default_factory=dict, compare=compare, repr=compare, metadata=meta)
    return field(default=default, compare=compare, metadata=meta)


# --- rules on the keys written (run before the values are checked) -----------


class KeysRule:
    """A rule on which keys are written, run before any value is checked."""

    def check_keys(self, present: Mapping[str, object], at: Loc) -> None:
        raise NotImplementedError


class BuiltRule:
    """A rule on the built section's values."""

    def check_built(self, built: Any, present: Mapping[str, object], at: Loc) -> None:
        raise NotImplementedError


class ExactlyOne(KeysRule):
    """Exactly one of NAMES; the section's kind is the one written."""

    __slots__ = ("names", "what")

    def __init__(self, names: Sequence[str], what: str) -> None:
        self.names = names
        self.what = what  # "a stage"

    def check_keys(self, present: Mapping[str, object], at: Loc) -> None:
        found = [name for name in self.names if name in present]
        among = ", ".join(self.names[:-1]) + f" or {self.names[-1]}"
        if not found:
            raise at.error(f"{self.what} needs exactly one of {among}; it has none")
        if len(found) > 1:
            lines = " and ".join(f"{n} (line {at.source.key_line(at.child(n).key)})" for n in found)
            raise at.child(found[1]).key_error(
                f"{self.what} needs exactly one of {among}; it has {lines}"
            )


class OnlyWith(KeysRule):
    """KEYS may be written only beside one of WITH (the kind keys), else MESSAGE."""

    __slots__ = ("keys", "message", "with_")

    def __init__(self, keys: Sequence[str], with_: Sequence[str], message: str) -> None:
        self.keys = keys
        self.with_ = with_
        self.message = message  # "{key}" is replaced by the key written

    def check_keys(self, present: Mapping[str, object], at: Loc) -> None:
        if any(name in present for name in self.with_):
            return
        for name in self.keys:
            if name in present:
                raise at.child(name).key_error(self.message.format(key=name))


class AtLeastOne(KeysRule):
    __slots__ = ("message", "names")

    def __init__(self, names: Sequence[str], message: str) -> None:
        self.names = names
        self.message = message

    def check_keys(self, present: Mapping[str, object], at: Loc) -> None:
        if not any(name in present for name in self.names):
            raise at.error(self.message)


class OnlyFor(KeysRule):
    """KEYS (name -> value) belong to one value of SELECTOR only ("values" to type enum)."""

    __slots__ = ("default", "keys", "selector", "what")

    def __init__(self, selector: str, keys: Mapping[str, str], default: str, what: str) -> None:
        self.selector = selector
        self.keys = keys
        self.default = default
        self.what = what  # "columns"

    def check_keys(self, present: Mapping[str, object], at: Loc) -> None:
        chosen = present.get(self.selector, self.default)
        for name, value in self.keys.items():
            if name in present and chosen != value:
                raise at.child(name).key_error(f'"{name}" applies to {value} {self.what} only')


# --- rules on the built section ---------------------------------------------


class NotLonger(BuiltRule):
    """Duration SHORT no longer than LONG (backoff initial and max)."""

    __slots__ = ("long", "short")

    def __init__(self, short: str, long: str) -> None:
        self.short = short
        self.long = long

    def check_built(self, built: Any, present: Mapping[str, object], at: Loc) -> None:
        short, long = getattr(built, self.short), getattr(built, self.long)
        if short > long:
            where = at.child(self.short)
            raise where.error(
                f"{self.short} ({short:g}s) is longer than {self.long} ({long:g}s); "
                f"expected {self.short} no longer than {self.long}",
                line=where.line if self.short in present else at.line,
            )


class NoMoreThan(BuiltRule):
    """KEY of each item of the list LIST, where written, no higher than the section's LIMIT."""

    __slots__ = ("key", "limit", "list", "message")

    def __init__(self, list_name: str, key: str, limit: str, message: str) -> None:
        self.list = list_name
        self.key = key
        self.limit = limit
        self.message = message  # with {value} and {limit}

    def check_built(self, built: Any, present: Mapping[str, object], at: Loc) -> None:
        limit = getattr(built, self.limit)
        for i, item in enumerate(getattr(built, self.list)):
            value = getattr(item, self.key)
            if value is not None and value > limit:
                where = at.child(self.list).item(i).child(self.key)
                raise where.error(self.message.format(value=value, limit=limit))


class NeedsStages(BuiltRule):
    """KEY set to VALUE only in a section with stages (MESSAGE says why)."""

    __slots__ = ("key", "message", "value")

    def __init__(self, key: str, value: object, message: str) -> None:
        self.key = key
        self.value = value
        self.message = message

    def check_built(self, built: Any, present: Mapping[str, object], at: Loc) -> None:
        if getattr(built, self.key) == self.value and not built.stages:
            raise at.child(self.key).error(self.message)


class UniqueNames(BuiltRule):
    """No two items of the lists LISTS (taken together) share a name."""

    __slots__ = ("lists", "message")

    def __init__(self, lists: Sequence[str], message: str) -> None:
        self.lists = lists
        self.message = message  # with {name}, {first}, {again} and the section's fields

    def check_built(self, built: Any, present: Mapping[str, object], at: Loc) -> None:
        first_line: dict[str, int] = {}
        for list_name in self.lists:
            for i, item in enumerate(getattr(built, list_name)):
                item_at = at.child(list_name).item(i)
                if item.name in first_line:
                    text = self.message.format(
                        name=item.name, first=first_line[item.name], again=item.line, of=built
                    )
                    raise item_at.child("name").error(text, line=item_at.line)
                first_line[item.name] = item.line
