"""Names that common tools write beside the files they work on: when they are ready.

A glob in ``ignore`` never claims a name; these rules only delay one, so a
real file that happens to look like a tool's (``sediments``, ``sales-journal``)
is still claimed, a little later:

- ``sqlite``: SQLite's ``NAME-journal``, ``NAME-wal`` and ``NAME-shm`` wait as
  long as ``NAME`` sits beside them (the database is being written; taking
  its journal breaks the transaction and rolls it back when opened).  Once
  ``NAME`` is gone they are ordinary files.  And ``NAME`` itself waits while
  a rollback journal of a transaction (its header not zero) or a write-ahead
  log is beside it: the database alone is then a transaction half done, or
  lacks the commits still in its log.
- ``sed``: ``sed`` and exactly 6 characters of mkstemp's alphabet, GNU
  ``sed -i``'s temporary, renamed over the file edited right after its close;
- ``vim``: vim's write test, an empty file named ``4913`` (or 5036, 5159, ...:
  vim steps by 123 from 4913 until a name is free), removed right after its
  close;
- ``office``: ``~$NAME``, the owner file of Microsoft Office;
- ``python``: ``tmp`` and 8 characters of its alphabet, the default name of
  Python's ``tempfile.mkstemp`` and ``NamedTemporaryFile``, written and then
  renamed by many programs.

The last three are claimed only if they are still there ``grace`` after their
last change.  Every other name waits for nothing: whether a database has a
journal or a log beside it is asked once the claim has read its first bytes
(``database_waits``; a database that must wait goes back to incoming/, and
from then on its name is asked about before any claim).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from .config import TOOL_RULES as RULES
from .config import ToolFilesConfig

# SQLite's file formats (https://www.sqlite.org/fileformat.html).  A rollback
# journal's header is 28 bytes: written at the first change of a transaction
# (its magic still zero), the magic added once the database file may hold
# uncommitted pages (the journal is hot), and at the end the journal removed
# (DELETE mode), truncated to nothing (TRUNCATE) or its header zeroed (PERSIST).
# So a header not all zero means a transaction in progress or not rolled back.
# A write-ahead log starts with one of two magics (by byte order of its checksums).
JOURNAL_HEADER = 28
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
DATABASE_MAGIC = b"SQLite format 3\0"
WAL_MAGICS = (bytes.fromhex("377f0682"), bytes.fromhex("377f0683"))

_AUX = re.compile(rb"(.+)-(journal|wal|shm)\Z", re.DOTALL)
# glibc's mkstemp fills XXXXXX from these 62 characters; GNU sed's template is "sedXXXXXX".
_SED = re.compile(rb"sed[A-Za-z0-9]{6}\Z")
_VIM = re.compile(rb"[1-9][0-9]{3,8}\Z")
_OFFICE = re.compile(rb"~\$.", re.DOTALL)
# tempfile's names: its prefix "tmp" and 8 of "abcdefghijklmnopqrstuvwxyz0123456789_".
_PYTHON = re.compile(rb"tmp[a-z0-9_]{8}\Z")
_VIM_FIRST, _VIM_STEP = 4913, 123
_SHAPES = {
    "sqlite": rb"(?:.+-(?:journal|wal|shm)\Z)",
    "sed": rb"(?:sed[A-Za-z0-9]{6}\Z)",
    "vim": rb"(?:[1-9][0-9]{3,8}\Z)",
    "office": rb"(?:~\$.)",
    "python": rb"(?:tmp[a-z0-9_]{8}\Z)",
}


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a name is not claimed yet, and until when."""

    rule: str  # one of RULES
    reason: str  # for the log and status: what it is, what it waits for
    # A grace: claimable once unchanged this many seconds.  None: while the
    # reason lasts (a file beside it), looked at again now and then.
    grace: float | None = None


class Beside:
    """Looks at other names in the folder of the file judged (by its descriptor)."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd

    def stat(self, name: bytes) -> os.stat_result | None:
        """lstat NAME; None if there is no such file (or no such name can be: a name of
        255 bytes has no "-journal" beside it)."""
        try:
            return os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                return None
            raise

    def head(self, name: bytes, size: int) -> bytes:
        """The first SIZE bytes of a regular file; b"" if it cannot be read.
        Opened without following and without blocking, as a claim opens."""
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.dir_fd
            )
        except OSError:
            return b""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            return os.pread(fd, size, 0)
        except OSError:
            return b""
        finally:
            os.close(fd)


def _text(name: bytes) -> str:
    return os.fsdecode(name)


class ToolNames:
    """The rules in force (``tool_files.rules``) and their grace."""

    def __init__(self, config: ToolFilesConfig) -> None:
        self.rules = frozenset(config.rules)
        self.grace = config.grace
        self.held_warning = config.held_warning
        self.sqlite = "sqlite" in self.rules
        # One match decides for most names that no rule's shape fits.
        shapes = [_SHAPES[rule] for rule in RULES if rule in self.rules]
        self._any = re.compile(b"|".join(shapes) if shapes else rb"(?!)", re.DOTALL)

    def shaped(self, name: bytes) -> str | None:
        """The rule whose tool writes names like NAME (by the name alone), if any."""
        if not self._any.match(name):
            return None
        if self.sqlite and _AUX.match(name):
            return "sqlite"
        if "sed" in self.rules and _SED.match(name):
            return "sed"
        if "vim" in self.rules and _VIM.match(name):
            number = int(name)
            if number >= _VIM_FIRST and (number - _VIM_FIRST) % _VIM_STEP == 0:
                return "vim"
        if "office" in self.rules and _OFFICE.match(name):
            return "office"
        if "python" in self.rules and _PYTHON.match(name):
            return "python"
        return None

    def sqlite_base(self, name: bytes) -> bytes | None:
        """The database NAME would be a journal, log or shared memory of, if any."""
        aux = _AUX.match(name) if self.sqlite else None
        return aux.group(1) if aux else None

    def hold(
        self, name: bytes, size: int, age: float, beside: Beside, journals: bool = True
    ) -> Hold | None:
        """Why NAME (SIZE bytes, unchanged for AGE seconds) must not be claimed now;
        None when it may be.  JOURNALS false: a database's own wait for a journal
        beside it is left to the claim (``database_waits``, once its first bytes
        are read): two lstats a file spared."""
        if not self.rules:
            return None
        rule = self.shaped(name)
        if rule == "sqlite":
            aux = _AUX.match(name)
            assert aux is not None
            base = aux.group(1)
            if self._is_database(base, beside):
                kind = aux.group(2).decode()
                return Hold(
                    "sqlite", f'SQLite\'s {kind} file of "{_text(base)}", which is beside it'
                )
        elif rule is not None and (rule != "vim" or size == 0) and age < self.grace:
            return Hold(rule, _GRACE_WHY[rule], self.grace)
        if self.sqlite and journals:
            return self._database(name, size, beside)
        return None

    def database_waits(self, name: bytes, head: bytes, beside: Beside) -> Hold | None:
        """For a file just claimed, whose first bytes are HEAD: if it is a SQLite
        database (or empty: one just created), why it must wait for a journal or
        a log beside it, as ``hold`` would have said before the claim."""
        if not self.sqlite or not (head == b"" or head.startswith(DATABASE_MAGIC)):
            return None
        return self._database(name, 0 if head == b"" else len(head), beside, database=True)

    @staticmethod
    def _is_database(name: bytes, beside: Beside, size: int | None = None) -> bool:
        """Whether NAME is a SQLite database (or an empty file: one just created).
        So that a text file and its "-journal" never wait for each other."""
        if size is None:
            st = beside.stat(name)
            if st is None or not stat.S_ISREG(st.st_mode):
                return False
            size = st.st_size
        return size == 0 or beside.head(name, len(DATABASE_MAGIC)) == DATABASE_MAGIC

    def _database(
        self, name: bytes, size: int, beside: Beside, database: bool = False
    ) -> Hold | None:
        """NAME waits while the journal of a transaction, or a write-ahead log, is
        beside it.  DATABASE: NAME is known to be one (its bytes were read)."""
        journal, wal = name + b"-journal", name + b"-wal"
        st, wal_st = beside.stat(journal), beside.stat(wal)
        if st is None and wal_st is None:
            return None  # nearly every file: two lstats, and done
        if not database and not self._is_database(name, beside, size):
            return None
        if (
            st is not None
            and stat.S_ISREG(st.st_mode)
            and _journal_in_use(beside.head(journal, JOURNAL_HEADER))
        ):
            return Hold(
                "sqlite",
                f'its rollback journal "{_text(journal)}" is beside it '
                "(a transaction in progress, or one to roll back)",
            )
        # An empty log: a connection has it open and has written nothing yet.
        if (
            wal_st is not None
            and stat.S_ISREG(wal_st.st_mode)
            and (wal_st.st_size == 0 or beside.head(wal, 4) in WAL_MAGICS)
        ):
            return Hold(
                "sqlite",
                f'its write-ahead log "{_text(wal)}" is beside it '
                "(a connection open, or commits not checkpointed)",
            )
        return None


def _journal_in_use(header: bytes) -> bool:
    """Whether HEADER (a journal's first 28 bytes) is SQLite's, of a transaction in
    progress or to roll back: its magic, or zeros where it goes at first; then a
    sector size and a page size that are powers of two."""
    if len(header) < JOURNAL_HEADER or header[:8] not in (JOURNAL_MAGIC, bytes(8)):
        return False
    sector = int.from_bytes(header[20:24], "big")
    page = int.from_bytes(header[24:28], "big")
    return _power_of_two(sector, 512, 1 << 16) and _power_of_two(page, 512, 1 << 16)


def _power_of_two(n: int, low: int, high: int) -> bool:
    return low <= n <= high and n & (n - 1) == 0


_GRACE_WHY = {
    "sed": "shaped like the temporary file of sed -i (sed and 6 characters), which sed "
    "renames over the file it edits",
    "vim": "an empty file shaped like vim's write test (4913, 5036, ...), which vim removes",
    "office": "shaped like an owner file of Microsoft Office (~$NAME), which Office removes",
    "python": "shaped like a temporary file of Python's tempfile (tmp and 8 characters), "
    "which its program renames or removes",
}
