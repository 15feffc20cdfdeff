"""CSV as the builtins share it: column types, parsing values, streaming rows.

validate-csv records what it checked in the item's metadata, and the stages
after it read the file with that knowledge:

- ``metadata["csv"]``: ``{"delimiter": ",", "encoding": "utf-8"}``, how to read it;
- ``metadata["schema"]``: ``[{"name": "id", "type": "integer"}, ...]``, the
  columns in file order with their types (a loader creates its table from it);
- ``metadata["rows"]``: the number of data rows.

transform rewrites the first two for the file it writes (UTF-8, comma).
Rows are streamed (``csv.reader`` over the open file), never read whole.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import functools
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import PermanentError
from . import csvcache

TYPES = ("text", "integer", "decimal", "date", "enum", "regex")
CSV_KEY = "csv"
SCHEMA_KEY = "schema"
ROWS_KEY = "rows"

_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")

# Larger fields than csv's default 128 KiB are allowed, but not without bound.
csv.field_size_limit(16 * 1024 * 1024)


@dataclass(frozen=True)
class Column:
    """One column as validate-csv checks it."""

    name: str
    type: str = "text"
    required: bool = True  # the header must have it
    empty: bool = True  # an empty value is allowed (loaded as NULL)
    values: tuple[str, ...] = ()  # enum
    pattern: re.Pattern[str] | None = None  # regex
    date_format: str = "%Y-%m-%d"  # date

    def test(self) -> Callable[[str], object] | None:
        """A quick test of a non-empty value, true when ``check`` would find nothing wrong
        with it; None when any is right.  ``check`` says why, asked only after a no."""
        kind = self.type
        if kind == "integer":
            return _INTEGER.fullmatch
        if kind == "decimal":
            return _DECIMAL.fullmatch
        if kind == "date":
            return functools.partial(_is_date, date_format=self.date_format)
        if kind == "enum":
            return frozenset(self.values).__contains__
        if kind == "regex" and self.pattern is not None:
            return self.pattern.fullmatch
        return None

    def check(self, text: str) -> str:
        """Why TEXT is not a valid value of this column ("" when it is)."""
        if text == "":
            return "" if self.empty else "is empty"
        kind = self.type
        if kind == "integer" and not _INTEGER.fullmatch(text):
            return "is not an integer"
        if kind == "decimal" and not _DECIMAL.fullmatch(text):
            return "is not a decimal"
        if kind == "date" and not _is_date(text, self.date_format):
            return f"is not a date ({self.date_format})"
        if kind == "enum" and text not in self.values:
            return f"is not one of {', '.join(self.values)}"
        if kind == "regex" and self.pattern is not None and not self.pattern.fullmatch(text):
            return f"does not match {self.pattern.pattern}"
        return ""


@functools.lru_cache(maxsize=4096)
def _is_date(text: str, date_format: str) -> bool:
    """Whether strptime reads TEXT in DATE_FORMAT; remembered, as a file repeats its dates.

    strptime costs more than everything else validate-csv does to a row (it
    looks up the locale on every call); a file's dates are few and repeated.
    """
    try:
        dt.datetime.strptime(text, date_format)
    except ValueError:
        return False
    return True


def dialect(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(delimiter, encoding) recorded by validate-csv or transform; comma and UTF-8 otherwise."""
    info = metadata.get(CSV_KEY)
    if isinstance(info, Mapping):
        return str(info.get("delimiter", ",")), str(info.get("encoding", "utf-8"))
    return ",", "utf-8"


def schema_types(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Column name -> type, from the metadata (empty when no validation ran)."""
    out: dict[str, str] = {}
    schema = metadata.get(SCHEMA_KEY)
    if isinstance(schema, list):
        for col in schema:
            if isinstance(col, Mapping) and isinstance(col.get("name"), str):
                out[col["name"]] = str(col.get("type", "text"))
    return out


def open_text(path: Path, encoding: str) -> IO[str]:
    """The file for csv.reader: decoding strictly (a bad byte is an error, not a guess)."""
    return path.open("r", encoding=encoding, errors="strict", newline="")


def rows(handle: IO[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every record; the number is the record's first line."""
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    line = 1
    try:
        for record in reader:
            yield line, record
            line = reader.line_num + 1
    except csv.Error as exc:
        raise PermanentError(f"line {reader.line_num}: not valid CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"line {line}: not valid {exc.encoding}: byte 0x{exc.object[exc.start]:02x} "
            f"cannot be decoded"
        ) from None


@contextlib.contextmanager
def records(path: Path, delimiter: str, encoding: str) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """PATH's records as ``rows`` gives them: parsed once per process when small (``csvcache``).

    A small file that parses whole is served from (or put into) the cache;
    any other is streamed from the file, so errors read as they always did.
    The records may be shared: never change them.
    """
    known = csvcache.parsed(path, delimiter, encoding)
    if known is not None:
        yield iter(known)
        return
    with open_text(path, encoding) as handle:
        yield rows(handle, delimiter)


def convert(kind: str, text: str) -> Any:
    """A checked value as loaders store it: int, exact decimal text, ISO date, text, or None."""
    if text == "":
        return None
    if kind == "integer":
        return int(text)
    if kind == "decimal":
        return str(decimal.Decimal(text))
    return text


def convert_date(text: str, date_format: str) -> str | None:
    if text == "":
        return None
    return dt.datetime.strptime(text, date_format).date().isoformat()


def sql_type(kind: str, dialect_name: str) -> str:
    """The column type a loader creates for a validation type."""
    if kind == "integer":
        return "INTEGER" if dialect_name == "sqlite" else "bigint"
    if kind == "decimal":
        return "NUMERIC" if dialect_name == "sqlite" else "numeric"
    if kind == "date":
        return "TEXT" if dialect_name == "sqlite" else "date"
    return "TEXT" if dialect_name == "sqlite" else "text"


_CHUNK = 1024  # rows converted at once: column by column, in bounded memory


def _converted(kinds: list[str], records: list[list[str]], extra: tuple[Any, ...]) -> list[Any]:
    """RECORDS converted as ``convert`` does, column by column, EXTRA appended to each row.

    A loop per column with the kind's test outside it costs a third of a
    call of ``convert`` per value.
    """
    if not records:
        return []
    columns: list[Any] = []
    for kind, column in zip(kinds, zip(*records, strict=True), strict=True):
        if kind == "integer":
            columns.append([int(v) if v else None for v in column])
        elif kind == "decimal":
            columns.append([str(decimal.Decimal(v)) if v else None for v in column])
        else:
            columns.append([v or None for v in column])
    columns.extend(itertools.repeat(value, len(records)) for value in extra)
    return list(zip(*columns, strict=True))


def _chunk(
    kinds: list[str], chunk: list[tuple[int, list[str]]], extra: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """CHUNK's rows converted; PermanentError naming the line of a value that cannot be."""
    try:
        return _converted(kinds, [record for _, record in chunk], extra)
    except (ValueError, decimal.InvalidOperation):
        for line, record in chunk:  # which line it was, the slow way
            try:
                [convert(k, v) for k, v in zip(kinds, record, strict=True)]
            except (ValueError, decimal.InvalidOperation) as exc:
                raise PermanentError(f"line {line}: {exc} (validate the file first)") from None
        raise


@dataclass
class Source:
    """A CSV file to load: its header, the column types, and its rows converted."""

    header: list[str]
    types: list[str]
    _closing: contextlib.ExitStack
    _rows: Iterator[tuple[int, list[str]]]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self.rows()

    def rows(self, *extra: Any) -> Iterator[tuple[Any, ...]]:
        """The rows converted, each followed by the values EXTRA (a loader's item id)."""
        width = len(self.header)
        chunk: list[tuple[int, list[str]]] = []
        for line, record in self._rows:
            if len(record) != width or not record:
                if record == []:
                    continue  # a blank line
                raise PermanentError(
                    f"line {line}: {len(record)} fields where the header has {width}"
                )
            chunk.append((line, record))
            if len(chunk) >= _CHUNK:
                yield from _chunk(self.types, chunk, extra)
                chunk = []
        yield from _chunk(self.types, chunk, extra)

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_source(
    path: Path, metadata: Mapping[str, Any], delimiter: str | None, encoding: str | None
) -> Source:
    """Open PATH for loading: header from its first row, types from validate-csv's schema.

    Dates are already checked by validate-csv and stay as written; give them
    as ISO dates (or transform them) to load them into a date column.
    """
    meta_delimiter, meta_encoding = dialect(metadata)
    with contextlib.ExitStack() as closing:
        stream = closing.enter_context(
            records(path, delimiter or meta_delimiter, encoding or meta_encoding)
        )
        first = next(stream, None)
        if first is None:
            raise PermanentError("the file is empty: no header row")
        header = [h.strip() for h in first[1]]
        known = schema_types(metadata)
        kinds = [
            known.get(h, "text") if known.get(h, "text") in ("integer", "decimal") else "text"
            for h in header
        ]
        return Source(header, kinds, closing.pop_all(), stream)
    raise AssertionError("unreachable")  # for mypy: the with block returns or raises


__all__ = [
    "CSV_KEY",
    "ROWS_KEY",
    "SCHEMA_KEY",
    "TYPES",
    "Column",
    "Source",
    "convert",
    "dialect",
    "open_source",
    "open_text",
    "records",
    "rows",
    "schema_types",
    "sql_type",
]
