"""``builtin: validate-csv``: is this CSV file what the pipeline expects?

Checks the encoding, the delimiter, the header (required columns; unknown
ones refused when ``extra_columns: reject``), every value against its
column's type (integer, decimal, date, enum, regular expression), the number
of rows and the size.  All errors up to ``max_errors`` are collected, each
naming its line and column::

    line 17, column "amount": "abc" is not a decimal

and the file fails at once (PermanentError: the file is bad, retrying cannot
help).  It streams a large file: memory does not grow with its size; a small
one is parsed once for the stages after it too (``csvcache``).  What it
learnt goes into the metadata for the stages after it (``csvdata``).
"""

from __future__ import annotations

import codecs
import itertools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config.keys import OnlyFor, key
from ..config.source import Loc
from ..config.values import Choice, Flag, IntRange, Sections, Size, Text, Texts
from ..errors import PermanentError
from . import StageContext, StageFunc
from .builtin import BuildEnv
from .csvdata import CSV_KEY, ROWS_KEY, SCHEMA_KEY, TYPES, Column, records

_MAX_SHOWN = 60  # characters of a bad value quoted in an error


@dataclass(frozen=True)
class ColumnOptions:
    WHAT: ClassVar = "a column mapping ({keys})"
    RULES: ClassVar = (
        OnlyFor(
            "type", {"values": "enum", "pattern": "regex", "format": "date"}, "text", "columns"
        ),
    )

    name: str = key(Text("the column's name in the header"))
    type: str = key(Choice(TYPES), default="text")
    values: tuple[str, ...] = key(Texts("the allowed values, a list of strings"), default=())
    pattern: str = key(Text("a regular expression"), default="")
    format: str = key(Text("a strptime format such as %d.%m.%Y"), default="%Y-%m-%d")
    required: bool = key(Flag(), default=True)
    empty: bool = key(Flag(), default=True)


def _column(opts: ColumnOptions, at: Loc) -> Column:
    pattern = None
    if opts.type == "enum" and not opts.values:
        at.fail("values", 'an enum column needs "values": the allowed values')
    if opts.type == "regex":
        if not opts.pattern:
            at.fail("pattern", 'missing required key "pattern": a regular expression')
        try:
            pattern = re.compile(opts.pattern)
        except re.error as exc:
            at.fail("pattern", f"not a valid regular expression: {exc}")
    return Column(
        name=opts.name,
        type=opts.type,
        required=opts.required,
        empty=opts.empty,
        values=opts.values,
        pattern=pattern,
        date_format=opts.format,
    )


@dataclass(frozen=True)
class Options:
    delimiter: str = key(Text("one character, such as , or ; or a tab"), default=",")
    encoding: str = key(Text("a text encoding such as utf-8 or latin-1"), default="utf-8")
    columns: tuple[ColumnOptions, ...] = key(
        Sections(ColumnOptions, "a list of column mappings"), default=()
    )
    extra_columns: str = key(Choice(("allow", "reject")), default="allow")
    max_rows: int = key(IntRange(0, 2**62), default=10_000_000)
    max_size: int = key(Size(), default=1024**3)
    max_errors: int = key(IntRange(1, 10_000), default=20)


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    delimiter = opts.delimiter
    if delimiter == "\\t":
        delimiter = "\t"
    if len(delimiter) != 1:
        at.fail("delimiter", f'expected one character, got "{delimiter}"')
    encoding = opts.encoding
    try:
        codecs.lookup(encoding)
    except LookupError:
        at.fail("encoding", f'unknown encoding "{encoding}"; for example utf-8, latin-1, cp1252')
    columns = [_column(c, at.child("columns").item(i)) for i, c in enumerate(opts.columns)]
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        at.fail("columns", f'column "{dup}" is declared twice')
    by_name = {c.name: c for c in columns}
    extra, max_rows, max_size, max_errors = (
        opts.extra_columns,
        opts.max_rows,
        opts.max_size,
        opts.max_errors,
    )

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        path = ctx.data_file()
        size = path.stat().st_size
        if size > max_size:
            raise PermanentError(f"the file is {size} bytes, more than max_size ({max_size})")
        errors: list[str] = []
        more = 0

        def error(message: str) -> None:
            nonlocal more
            if len(errors) < max_errors:
                errors.append(message)
            else:
                more += 1

        count = 0
        with records(path, delimiter, encoding) as stream:
            first = next(stream, None)
            if first is None:
                raise PermanentError("the file is empty: no header row")
            header = [h.strip() for h in first[1]]
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]  # a byte-order mark
            position = {h: i for i, h in enumerate(header)}
            for column in columns:
                if column.required and column.name not in position:
                    error(f'line 1: the header lacks the required column "{column.name}"')
            if extra == "reject":
                for h in header:
                    if h not in names:
                        error(f'line 1: unexpected column "{h}" (extra_columns: reject)')
            if len(set(header)) != len(header):
                dup = next(h for h in header if header.count(h) > 1)
                error(f'line 1: column "{dup}" appears twice in the header')
            if errors:
                raise PermanentError(_summary(errors, more))
            checks = [(position[c.name], c) for c in columns if c.name in position]
            quick = [(i, not c.empty, c.test()) for i, c in checks]
            width = len(header)
            while chunk := list(itertools.islice(stream, _CHUNK)):
                clean = _clean(chunk, width, quick)
                if clean is not None and count + clean <= max_rows:
                    count += clean
                    continue
                # Something to tell (or blank lines): row by row, errors in file order.
                for line, record in chunk:
                    if record == []:
                        continue  # a blank line
                    count += 1
                    if count > max_rows:
                        error(f"line {line}: more than max_rows ({max_rows}) rows")
                        break
                    if len(record) != width:
                        error(f"line {line}: {len(record)} fields where the header has {width}")
                        continue
                    for index, column in checks:
                        value = record[index]
                        why = column.check(value)
                        if why:
                            shown = (
                                value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."
                            )
                            error(f'line {line}, column "{column.name}": "{shown}" {why}')
                    if more:
                        break  # enough to show; the rest is not read
                if more or count > max_rows:
                    break
        if errors:
            raise PermanentError(_summary(errors, more))
        return {
            CSV_KEY: {"delimiter": delimiter, "encoding": encoding},
            SCHEMA_KEY: [{"name": h, "type": _loaded_type(by_name.get(h))} for h in header],
            ROWS_KEY: count,
        }

    return stage


_CHUNK = 512  # rows checked at once, column by column
_RECORD = operator.itemgetter(1)


def _clean(
    chunk: list[tuple[int, list[str]]],
    width: int,
    quick: list[tuple[int, bool, Callable[[str], object] | None]],
) -> int | None:
    """The number of rows in CHUNK when all are valid, checked column by column in C
    loops (map, filter, all); None when some row needs a closer look."""
    records = list(map(_RECORD, chunk))
    lengths = set(map(len, records))
    if 0 in lengths:
        return None  # blank lines: row by row, rare
    if not width or lengths != {width}:
        return None
    columns = list(zip(*records, strict=True))
    for index, required, test in quick:
        values = columns[index]
        if required and "" in values:
            return None
        if test is not None and not all(map(test, filter(None, values))):
            return None
    return len(records)


def _loaded_type(column: Column | None) -> str:
    """The type a loader gives the column: dates only when written as ISO dates."""
    if column is None:
        return "text"
    if column.type == "date":
        return "date" if column.date_format == "%Y-%m-%d" else "text"
    if column.type in ("integer", "decimal"):
        return column.type
    return "text"


def _summary(errors: list[str], more: int) -> str:
    text = "; ".join(errors)
    if more:
        text += f"; and more errors after these {len(errors)} (max_errors)"
    return text


__all__ = ["build"]
