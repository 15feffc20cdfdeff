"""``builtin: publish``: a durable copy of the file in another folder, maybe on another filesystem.

The file the stage reads (``StageContext.data_file``: a transform's output
when an earlier stage made one) is copied into ``to`` the way the spool
moves files across filesystems:

1. a hidden temporary in ``to`` (``.dropline-publish.ITEMID.TAG.tmp``),
   opened with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0640;
2. the bytes copied by the kernel (copy_file_range, else sendfile), the
   temporary fsynced;
3. renamed into place, never over another file (renameat2 RENAME_NOREPLACE),
   except with ``if_exists: replace`` (an atomic rename over it);
4. the folder fsynced.

A reader of ``to`` therefore sees a complete file under its final name, or
nothing.  Idempotent: a retry that finds the name it would use already
holding the same bytes (the previous attempt got that far before a crash)
counts as done and copies nothing; a temporary left by an interrupted
attempt of this item is removed first.  The source is only read.

``name`` is a template: ``{name}`` (the original name), ``{stem}`` and
``{ext}`` (``report`` and ``.csv``; ``ext`` is empty without an extension),
``{item_id}``, ``{pipeline}``, ``{date}`` (the day the file was claimed,
YYYY-MM-DD in local time, taken from the item id so every retry computes the
same name).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import string
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.keys import key
from ..config.source import Loc
from ..config.values import AbsolutePath, Choice, Text
from ..errors import PermanentError
from ..escaping import quoted
from ..spool import fit_name
from ..spool.durable import (
    DIR_FLAGS,
    FILE_FLAGS,
    NAME_MAX,
    compare,
    copy_to_temp,
    rename_into_place,
)
from . import StageContext, StageFunc
from .builtin import BuildEnv

PLACEHOLDERS = ("name", "stem", "ext", "item_id", "pipeline", "date")
IF_EXISTS = ("keep-both", "replace", "fail")
TEMP_PREFIX = b".dropline-publish."
MODE = 0o640

_ULID = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# The temporaries being written right now.  A builtin runs in a worker thread,
# and a thread past its timeout is abandoned, not killed: it may still be
# copying when the retry starts.  The retry then fails (and is tried again
# later) instead of removing a temporary that thread is about to rename.
_busy: set[tuple[str, bytes]] = set()
_busy_lock = threading.Lock()


@dataclass(frozen=True)
class Options:
    to: Path = key(AbsolutePath("an absolute path of a folder"))
    name: str = key(Text("a file name template such as {stem}-{date}{ext}"), default="{name}")
    if_exists: str = key(Choice(IF_EXISTS), default="keep-both")


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    to, template, if_exists = opts.to, opts.name, opts.if_exists
    _check_folder(at, to)
    _check_template(at, template)

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        _check_cancel(ctx)
        final = render(template, ctx)
        if ctx.rehearsal:
            return {"would": _would_publish(ctx, to, final, if_exists)}
        tmp = temp_name(ctx)
        with _exclusive((str(to), tmp)):
            published = _publish(ctx, to, final, tmp, if_exists)
        return {"published": str(to / os.fsdecode(published))}

    return stage


def _would_publish(ctx: StageContext, to: Path, final: bytes, if_exists: str) -> str:
    """What publishing would do (``dropline try``), judged as ``_place`` judges, nothing
    written: the name it would take, or PermanentError where the real stage fails."""
    with _opened(ctx, to) as (dir_fd, src, size):
        for name in _candidates(final, ctx.item_id, if_exists):
            found = compare(src, size, dir_fd, name)
            target = quoted(os.path.join(os.fsencode(to), name))
            if found == "same":
                return f"nothing to copy: {target} holds the same content already"
            if found == "different" and if_exists == "keep-both":
                continue
            if found == "different" and if_exists == "fail":
                raise PermanentError(f"publish: {to / os.fsdecode(name)} already exists")
            if found == "different":
                return f"publish a copy as {target}, replacing the file there"
            return f"publish a copy as {target}"
        raise FileExistsError(errno.EEXIST, f"publish: no free name for {quoted(final)} in {to}")


# --- start-up checks -----------------------------------------------------------


def _check_folder(at: Loc, to: Path) -> None:
    try:
        st = os.lstat(to)
    except FileNotFoundError:
        at.fail("to", f"the folder {to} does not exist (publish needs it at start-up)")
    except OSError as exc:
        at.fail("to", f"cannot look at {to}: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        at.fail("to", f"{to} is a symbolic link: name the real folder ({to.resolve()})")
    if not stat.S_ISDIR(st.st_mode):
        at.fail("to", f"{to} is not a folder")
    if not os.access(to, os.W_OK | os.X_OK):
        at.fail("to", f"{to} is not writable by this user (uid {os.geteuid()})")


def _check_template(at: Loc, template: str) -> None:
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        brace = "write a literal brace as {{ or }}"
        at.fail("name", f'cannot read the template "{template}": {exc} ({brace})')
    for literal, field, spec, conversion in parts:
        if "/" in literal or "\0" in literal:
            at.fail("name", f'"{template}" must make a file name: no "/" in it')
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            at.fail("name", f'unknown placeholder "{{{field}}}"; allowed: {allowed}')
        if spec or conversion:
            at.fail("name", f'placeholder "{{{field}}}" takes no format or conversion')
    sample = template.format(
        name="report.csv", stem="report", ext=".csv", item_id="I", pipeline="p", date="2000-01-01"
    )
    if sample in ("", ".", "..") or sample.encode().startswith(TEMP_PREFIX):
        at.fail("name", f'"{template}" does not make a usable file name')


# --- names ------------------------------------------------------------------------


def render(template: str, ctx: StageContext) -> bytes:
    """The published name of CTX's file (bytes: an undecodable name is kept verbatim)."""
    stem, ext = os.path.splitext(ctx.name)
    name = template.format(
        name=ctx.name,
        stem=stem,
        ext=ext,
        item_id=ctx.item_id,
        pipeline=ctx.pipeline,
        date=claim_day(ctx.item_id),
    )
    raw = os.fsencode(name)
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise PermanentError(f"publish: {quoted(raw)} (from the name template) is not a file name")
    if raw.startswith(TEMP_PREFIX):
        raise PermanentError(f"publish: {quoted(raw)} would look like a temporary of publish")
    return raw


def claim_day(item_id: str) -> str:
    """YYYY-MM-DD (local time) of the claim, read from the item id's timestamp."""
    millis = 0
    if len(item_id) == 26 and all(c in _ULID for c in item_id):
        for char in item_id[:10]:
            millis = millis * 32 + _ULID.index(char)
    seconds = millis / 1000 if millis else time.time()
    return time.strftime("%Y-%m-%d", time.localtime(seconds))


def temp_name(ctx: StageContext) -> bytes:
    """The temporary of this item and stage in the target folder (the same at every attempt)."""
    tag = hashlib.sha256(f"{ctx.pipeline}\0{ctx.stage}".encode(errors="surrogateescape"))
    return TEMP_PREFIX + f"{ctx.item_id}.{tag.hexdigest()[:8]}.tmp".encode(errors="replace")


def _candidates(final: bytes, item_id: str, if_exists: str) -> Iterator[bytes]:
    """FINAL; with keep-both then FINAL.ITEMID, FINAL.ITEMID-N (as archive/ names them)."""
    if len(final) <= NAME_MAX:
        yield final
    elif if_exists != "keep-both":
        raise PermanentError(f"publish: {quoted(final)} is longer than {NAME_MAX} bytes")
    if if_exists == "keep-both":
        yield fit_name(final, item_id)
        for n in range(1, 100):
            yield fit_name(final, f"{item_id}-{n}")


# --- the copy -----------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(key: tuple[str, bytes]) -> Iterator[None]:
    with _busy_lock:
        if key in _busy:
            raise RuntimeError(
                "publish: an earlier attempt for this file is still copying (past its "
                "timeout); tried again later"
            )
        _busy.add(key)
    try:
        yield
    finally:
        with _busy_lock:
            _busy.discard(key)


def _check_cancel(ctx: StageContext) -> None:
    if ctx.cancel is not None and ctx.cancel.is_set():
        raise InterruptedError("publish: cancelled (dropline is stopping)")


@contextlib.contextmanager
def _opened(ctx: StageContext, to: Path) -> Iterator[tuple[int, int, int]]:
    """(the publish folder, the file to publish, its size), open for the block."""
    try:
        dir_fd = os.open(to, DIR_FLAGS)
    except OSError as exc:
        # Missing (an unmounted share?) or replaced by a link: retried, it may come back.
        raise OSError(exc.errno, f"publish folder {to}: {exc.strerror}") from exc
    try:
        src = os.open(ctx.data_file(), FILE_FLAGS)
        try:
            yield dir_fd, src, os.fstat(src).st_size
        finally:
            os.close(src)
    finally:
        os.close(dir_fd)


def _publish(ctx: StageContext, to: Path, final: bytes, tmp: bytes, if_exists: str) -> bytes:
    with _opened(ctx, to) as (dir_fd, src, size):
        # A temporary of an interrupted attempt (a crash before its rename).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        published = _place(ctx, to, src, size, dir_fd, final, tmp, if_exists)
        os.fsync(dir_fd)
    return published


def _place(
    ctx: StageContext,
    to: Path,
    src: int,
    size: int,
    dir_fd: int,
    final: bytes,
    tmp: bytes,
    if_exists: str,
) -> bytes:
    """Copy SRC under the first fitting name (or find it there already); the name."""
    copied = False
    try:
        for name in _candidates(final, ctx.item_id, if_exists):
            found = compare(src, size, dir_fd, name)
            if found == "same":
                return name  # done by an earlier attempt (or identical already)
            if found == "different" and if_exists == "keep-both":
                continue
            if found == "different" and if_exists == "fail":
                raise PermanentError(f"publish: {to / os.fsdecode(name)} already exists")
            if not copied:
                copy_to_temp(src, size, dir_fd, tmp, MODE, lambda: _check_cancel(ctx))
                copied = True
            try:
                rename_into_place(dir_fd, tmp, name, replace=if_exists == "replace")
            except FileExistsError:
                # Taken since we looked, by someone else: as if it had been there before.
                if if_exists == "keep-both":
                    continue
                if compare(src, size, dir_fd, name) == "same":
                    return name
                raise PermanentError(f"publish: {to / os.fsdecode(name)} already exists") from None
            copied = False  # renamed into place: no temporary left
            return name
        raise FileExistsError(errno.EEXIST, f"publish: no free name for {quoted(final)} in {to}")
    finally:
        if copied:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)


__all__ = ["IF_EXISTS", "MODE", "PLACEHOLDERS", "TEMP_PREFIX", "build", "claim_day", "render"]
