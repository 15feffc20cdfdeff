"""Loading: one walker that builds any declared section from the values read.

``load_config`` reads the file (source.py) and builds ``Config`` with
``build``, which serves every section alike: the top level, a pipeline, a
stage, its backoff, metrics, and a builtin stage's ``with:`` options.  For
a mapping it refuses what is not one, unknown keys (with the closest name),
missing keys; runs the section's presence rules; checks each key's value;
builds nested sections and lists of them; then runs the section's value
rules.  The first problem raises a ConfigError naming the file, the exact
line, the dotted key and what is allowed.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from .keys import BuiltRule, Check, Derived, Key, KeysRule
from .model import Config
from .source import Loc, Source, read_config
from .values import Section, Sections, describe, items, keys

_T = TypeVar("_T")


def load_config(path: Path | str) -> Config:
    """Read, validate and return the configuration in the YAML file `path`.

    Relative paths in the file are taken relative to the file's directory.
    Every problem, from an unreadable file to a bad glob, raises ConfigError
    naming the file, the line, the key, what was wrong and what is allowed.
    """
    config_path = Path(path).absolute()
    values, source = read_config(config_path)
    return build(Config, values, Loc(source, ""), path=config_path)


_Declared = tuple[list[tuple[str, Key]], list[tuple[str, Derived]]]
_DECLARED: dict[type[Any], _Declared] = {}


def _declared(cls: type[Any]) -> _Declared:
    """The keys of CLS (field name, declaration) and its derived fields, in order."""
    if cls in _DECLARED:
        return _DECLARED[cls]
    declared: list[tuple[str, Key]] = []
    derived: list[tuple[str, Derived]] = []
    for f in fields(cls):
        if "key" in f.metadata:
            k: Key = f.metadata["key"]
            declared.append((f.name, k if k.name else Key(k.check, f.name, k.required)))
        elif "derived" in f.metadata:
            derived.append((f.name, f.metadata["derived"]))
    _DECLARED[cls] = declared, derived
    return declared, derived


def build(cls: type[_T], value: object, at: Loc, **given: Any) -> _T:
    """CLS built from VALUE, a mapping written at AT; GIVEN fills derived fields."""
    declared, derived = _declared(cls)
    allowed = [k.name for _, k in declared]
    what = str(getattr(cls, "WHAT", "a mapping")).format(keys=keys(allowed))
    if not isinstance(value, dict):
        raise at.error(f"expected {what}, got {describe(value)}")
    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ";"
            raise at.child(name).key_error(f'unknown key "{name}"{hint} allowed: {keys(allowed)}')
    required = [k.name for _, k in declared if k.required]
    for name in required:
        if name not in value:
            raise at.child(name).error(
                f'missing required key "{name}"; required here: {keys(required)}', line=at.line
            )
    rules = getattr(cls, "RULES", ())
    for rule in rules:
        if isinstance(rule, KeysRule):
            rule.check_keys(value, at)
    kwargs: dict[str, Any] = {}
    for field_name, k in declared:
        if k.name in value:
            kwargs[field_name] = _check(k.check, value[k.name], at.child(k.name))
    for field_name, d in derived:
        kwargs[field_name] = given[field_name] if d.what == "path" else _derive(d, value, at)
    built = cls(**kwargs)
    for rule in rules:
        if isinstance(rule, BuiltRule):
            rule.check_built(built, value, at)
    return built


def _check(check: Check, value: object, at: Loc) -> Any:
    if isinstance(check, Section):
        return build(check.cls, value, at)
    if isinstance(check, Sections):
        found = items(value, at, check.what)
        if not found and check.non_empty:
            raise at.error(f"expected {check.what}, got an empty list")
        return tuple(build(check.cls, item, at.item(i)) for i, item in enumerate(found))
    return check(value, at)


def _derive(d: Derived, value: dict[str, object], at: Loc) -> Any:
    source: Source = at.source
    if d.what == "line":
        return at.line
    if d.what == "line_of":
        return source.line(at.child(d.arg).key)
    if d.what == "key_lines":
        return types.MappingProxyType({n: source.key_line(at.child(n).key) for n in value})
    if d.what == "lines_under":
        under = source.lines_under(at.child(d.arg).key) if d.arg in value else {}
        return types.MappingProxyType(under)
    if d.what == "present":
        return next(name for name in d.arg if name in value)
    raise AssertionError(f"unknown derived field {d.what}")
