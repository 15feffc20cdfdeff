"""``builtin: transform``: a clean CSV from a messy one, written as a new file.

UTF-8 and ``\\n`` line endings whatever came in; values trimmed; columns
renamed, then selected (and ordered); rows with a key already seen dropped
(the first one kept).  It streams: memory holds one row, plus one 16-byte
digest per distinct key when ``dedupe`` is on.

Where the result goes (``archive:``):

- ``original`` (the default): into the item's scratch folder; the stages
  after it read that file (``StageContext.data_file``), and archive/ keeps
  the file exactly as it was dropped;
- ``transformed``: it replaces the file in working/ (a temporary file there,
  fsynced, renamed over it, the folder fsynced), so archive/ keeps the
  result.  The stage declares that it modifies the file.

Idempotent: run again, it writes the same result again from the same input
(with ``archive: transformed`` the input is then already transformed, and
transforming that again gives the same file).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.keys import key
from ..config.source import Loc
from ..config.values import Choice, Flag, FreeMap, Text, Texts, text
from ..errors import PermanentError
from ..spool import WORKING_TEMP_PREFIX
from ..spool.durable import replace_file
from . import DATA_PATH, StageContext, csvcache
from .builtin import BuildEnv, BuiltStage
from .csvdata import CSV_KEY, ROWS_KEY, SCHEMA_KEY, dialect, records, schema_types

# A temporary in working/ (archive: transformed); recovery removes a leftover.
TMP_PREFIX = WORKING_TEMP_PREFIX.decode()


@dataclass(frozen=True)
class Options:
    delimiter: str | None = key(Text("one character (default: as validated)"), default=None)
    encoding: str | None = key(Text("a text encoding (default: as validated)"), default=None)
    trim: bool = key(Flag(), default=True)
    rename: Mapping[str, object] = key(
        FreeMap("a mapping of old name: new name"), default_factory=dict
    )
    select: tuple[str, ...] = key(Texts("the columns to keep, in order (after rename)"), default=())
    dedupe: tuple[str, ...] = key(Texts("the columns whose values make a row's key"), default=())
    archive: str = key(Choice(("original", "transformed")), default="original")


def build(opts: Options, at: Loc, env: BuildEnv) -> BuiltStage:
    delimiter = opts.delimiter
    if delimiter == "\\t":
        delimiter = "\t"
    if delimiter is not None and len(delimiter) != 1:
        at.fail("delimiter", f'expected one character, got "{delimiter}"')
    encoding, trim, keep = opts.encoding, opts.trim, opts.archive
    renames = at.child("rename")
    rename = {
        old: text(new, renames.child(old), "the new column name")
        for old, new in opts.rename.items()
    }
    select, dedupe = list(opts.select), list(opts.dedupe)

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        source = ctx.data_file()
        meta_delimiter, meta_encoding = dialect(ctx.metadata)
        types = schema_types(ctx.metadata)
        if keep == "transformed":
            target = ctx.path.parent / f"{TMP_PREFIX}{ctx.item_id}"
        else:
            target = ctx.scratch_dir() / f"transformed-{ctx.item_id}.csv"
        written, dropped, header = _transform(
            source,
            target,
            delimiter or meta_delimiter,
            encoding or meta_encoding,
            trim=trim,
            rename=rename,
            select=select,
            dedupe=dedupe,
        )
        meta: dict[str, Any] = {
            CSV_KEY: {"delimiter": ",", "encoding": "utf-8"},
            SCHEMA_KEY: [{"name": h, "type": types.get(_old(h, rename), "text")} for h in header],
            ROWS_KEY: written,
            "duplicates_dropped": dropped,
        }
        if keep == "transformed":
            replace_file(target, ctx.path)
            meta[DATA_PATH] = ""  # the working file itself is now the data
        else:
            meta[DATA_PATH] = str(target)
        return meta

    return BuiltStage(stage, modifies=keep == "transformed")


def _old(new: str, rename: Mapping[str, str]) -> str:
    for old, renamed in rename.items():
        if renamed == new:
            return old
    return new


def _transform(
    source: Path,
    target: Path,
    delimiter: str,
    encoding: str,
    *,
    trim: bool,
    rename: Mapping[str, str],
    select: list[str],
    dedupe: list[str],
) -> tuple[int, int, list[str]]:
    """Write the transformed copy of SOURCE to TARGET (fsynced); (rows, dropped, header)."""
    seen: set[bytes] = set()
    written = dropped = 0
    with records(source, delimiter, encoding) as stream:
        first = next(stream, None)
        if first is None:
            raise PermanentError("the file is empty: no header row")
        header = [h.strip().lstrip("\ufeff") for h in first[1]]
        header = [rename.get(h, h) for h in header]
        for wanted in [*select, *dedupe]:
            if wanted not in header:
                raise PermanentError(
                    f'transform: no column "{wanted}" (columns after rename: {", ".join(header)})'
                )
        order = [header.index(c) for c in select] if select else list(range(len(header)))
        key_at = [header.index(c) for c in dedupe]
        out_header = [header[i] for i in order]
        fd = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
        )
        try:
            out = _Output(fd)
            batch = [out_header]
            # The loop runs once per row in Python: what can be decided once is.
            width, strip, blake2b = len(header), str.strip, hashlib.blake2b
            whole = order == list(range(width))  # no select: rows kept as they are
            one_key = key_at[0] if len(key_at) == 1 else -1
            for line, record in stream:
                if len(record) != width or not record:
                    if record == []:
                        continue
                    raise PermanentError(
                        f"line {line}: {len(record)} fields where the header has {width}"
                    )
                if trim:
                    record = list(map(strip, record))
                if key_at:
                    key = (
                        record[one_key]
                        if one_key >= 0
                        else "\x1f".join([record[i] for i in key_at])
                    )
                    digest = blake2b(key.encode(), digest_size=16).digest()
                    if digest in seen:
                        dropped += 1
                        continue
                    seen.add(digest)
                batch.append(record if whole else [record[i] for i in order])
                written += 1
                if len(batch) >= _BATCH:
                    out.rows(batch)
                    batch = []
            out.rows(batch)
            out.close()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        os.close(fd)
    return written, dropped, out_header


class _Output:
    """The CSV written to FD: in one write when it is small, then remembered as parsed.

    The rows written are the records the loader after transform would parse
    from the file, so they go into ``csvcache`` under the file's bytes.  That
    holds while every record takes exactly one line: a value with a line
    break (or a NUL) is left for the loader to parse, as is a large file,
    which is written as it goes (memory holds one buffer).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._kept: list[list[str]] | None = []  # None once a buffer was written out

    def rows(self, batch: list[list[str]]) -> None:
        self._writer.writerows(batch)
        if self._kept is not None:
            self._kept.extend(batch)
        if self._buffer.tell() > csvcache.MAX_FILE:
            self._kept = None
            self._flush()

    def close(self) -> None:
        text = self._buffer.getvalue()
        data = self._flush()
        kept = self._kept
        if kept is not None and text.count("\n") == len(kept) and not _ODD.search(text):
            csvcache.remember(data, ",", "utf-8", list(enumerate(kept, 1)))

    def _flush(self) -> bytes:
        data = self._buffer.getvalue().encode("utf-8")
        self._buffer.seek(0)
        self._buffer.truncate()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return data


_BATCH = 1024  # rows handed to csv.writer at once
_ODD = re.compile("[\r\x00]")  # a record of one line cannot hold these unquoted


__all__ = ["TMP_PREFIX", "build"]
