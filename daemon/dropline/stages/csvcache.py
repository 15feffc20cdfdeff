"""CSV files parsed once per process: validate-csv, transform and the loaders share a parse.

A file of the CSV pipeline is read by three builtins in a row (validate-csv,
transform, a loader), each of which used to decode and parse it again.  Here
a small file's records are kept after the first parse, keyed by the SHA-256
of the file's bytes with the delimiter and encoding: what is remembered is a
pure function of its key, so it can never be stale.  A file changed between
two stages (a command that rewrites it, a transform that replaces it, an
operator) has other bytes, hence another key, and is parsed again; a parse
made in another process (a stage run by another worker process) is simply
not found.  The next stage still reads the file (to know its digest), which
costs a read and a hash, far less than decoding and parsing it.

Only files that parse whole are remembered: a file that does not decode or
is not valid CSV is read again by the stage as a stream, so its errors are
told exactly as they always were (and validation that stops after
``max_errors`` never reads the rest).  Large files are never held: they are
streamed, and memory does not grow with them.

transform puts in the records of the file it wrote, so the loader after it
does not parse them either (``remember``).  The records are shared between
threads: they are lists that nobody may change.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PermanentError

# A file larger than this is streamed, never held.  A parsed record takes
# several times its bytes (a str object per field), so the whole cache is a
# few MiB per process at most, whatever the files.
MAX_FILE = 1024 * 1024
MAX_BYTES = 4 * MAX_FILE  # the files' bytes held at once, summed
MAX_FILES = 32

Record = tuple[int, list[str]]  # (the record's first line, its fields), as csvdata.rows has it
Key = tuple[bytes, str, str]  # (SHA-256 of the bytes, delimiter, encoding)


@dataclass
class Stats:
    """What the cache of this process did: for tests and the benchmark's profile."""

    hits: int = 0
    misses: int = 0


class _Cache:
    """The parses of this process: least recently used first out, bounded in bytes and files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # stages of several worker threads share it
        self._entries: OrderedDict[Key, tuple[int, Sequence[Record]]] = OrderedDict()
        self._bytes = 0
        self.stats = Stats()

    def get(self, key: Key) -> Sequence[Record] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[1]

    def put(self, key: Key, size: int, records: Sequence[Record]) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[0]
            self._entries[key] = (size, records)
            self._bytes += size
            while self._entries and (self._bytes > MAX_BYTES or len(self._entries) > MAX_FILES):
                _, (dropped, _) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.stats = Stats()


_CACHE = _Cache()


def stats() -> Stats:
    return _CACHE.stats


def clear() -> None:
    """Forget every parse (tests)."""
    _CACHE.clear()


def _key(data: bytes, delimiter: str, encoding: str) -> Key:
    return hashlib.sha256(data).digest(), delimiter, encoding


def parsed(path: Path, delimiter: str, encoding: str) -> Sequence[Record] | None:
    """PATH's records, parsed now or remembered; None when it is to be streamed instead.

    None for a large file, and for one that does not decode or parse: the
    caller streams it (``csvdata.rows``), which tells where it went wrong.
    """
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_FILE:
            return None
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        return None
    key = _key(data, delimiter, encoding)
    found = _CACHE.get(key)
    if found is not None:
        return found
    try:
        text = data.decode(encoding, errors="strict")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        every = list(reader)
        # Each record on a line of its own (the usual case): numbered without a Python
        # step per record. Otherwise counted as csvdata.rows counts them.
        lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        if every and "\r" not in text and lines == len(every):
            records: list[Record] = list(enumerate(every, 1))
        else:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
            records = []
            line = 1
            for fields in reader:
                records.append((line, fields))
                line = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error, PermanentError):
        return None
    _CACHE.put(key, len(data), records)
    return records


def remember(data: bytes, delimiter: str, encoding: str, records: Sequence[Record]) -> None:
    """Remember RECORDS as the parse of DATA (the bytes a stage just wrote and knows)."""
    if len(data) <= MAX_FILE:
        _CACHE.put(_key(data, delimiter, encoding), len(data), records)


__all__ = ["MAX_FILE", "Record", "Stats", "clear", "parsed", "remember", "stats"]
