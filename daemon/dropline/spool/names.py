"""The names the spool gives files: in a sub-folder or not, fitted to NAME_MAX,
free in working/, and the candidates for a free name at the end.

Pure: nothing here looks at the filesystem.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .durable import NAME_MAX

ERROR_SUFFIX = b".error.json"  # failed/NAME's reason beside it
# A file that ends outside archive/, in a folder of the data folder that the
# operator named (a skipped duplicate's ``duplicates_to``), has an archive folder
# that climbs out of archive/: "../NAME" or "../NAME/DAY".  So the log's ``to``,
# relative to archive/, stays true; the spool opens it from the data folder, one
# folder at a time, never through "..".
OUTSIDE = "../"
# Temporaries a stage writes in working/ before renaming them over its file
# (transform with archive: transformed); never a dropped file.
WORKING_TEMP_PREFIX = b".dropline-tmp-"


def split_name(name: bytes) -> tuple[bytes, bytes]:
    """(folder, base) of a name relative to a data folder: b"" for a file directly in it."""
    if b"/" not in name:
        return b"", name  # nearly every file: no tuple of three, no slicing
    folder, _, base = name.rpartition(b"/")
    return folder, base


def fit_name(name: bytes, tag: str, reserve: int = 0) -> bytes:
    """NAME with ``.TAG`` before its extension, shortened to fit NAME_MAX - RESERVE."""
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, b""
    suffix = b"." + tag.encode() + (b"." + ext if ext else b"")
    room = NAME_MAX - reserve - len(suffix)
    return stem[: max(room, 1)] + suffix


def free_working_name(name: bytes, item_id: str, in_use: set[bytes]) -> bytes:
    """NAME itself unless a file in working/ has it (IN_USE), else NAME.ITEMID.

    Only dropline writes into working/, so the names in use are known
    without asking the filesystem; a rename that meets one anyway fails
    (RENAME_NOREPLACE) rather than overwrite.
    """
    if b"/" in name:
        name = split_name(name)[1]  # working/ is flat; the item keeps the folder
    if name not in in_use:
        return name
    return fit_name(name, item_id)


def name_candidates(name: bytes, item_id: str, reserve: int) -> Iterator[bytes]:
    """NAME, then NAME.ITEMID, then NAME.ITEMID-N: built only as far as needed.
    A name in a folder keeps it; only its base name changes."""
    folder, base = split_name(name)
    prefix = folder + b"/" if folder else b""
    if len(base) + reserve <= NAME_MAX:
        yield name
    yield prefix + fit_name(base, item_id, reserve)
    for n in range(1, 100):
        yield prefix + fit_name(base, f"{item_id}-{n}", reserve)


def archive_day(seconds: float) -> str:
    """The day folder (archive_layout: daily) of a file ended at SECONDS: "2026-12-07"."""
    return time.strftime("%Y-%m-%d", time.localtime(seconds))


def outside_of(final_dir: str) -> str:
    """The folder of the data folder that FINAL_DIR is in ("" : archive/ or failed/)."""
    if not final_dir.startswith(OUTSIDE):
        return ""
    return final_dir.removeprefix(OUTSIDE).partition("/")[0]


def end_folder(outcome: str | None, final_dir: str | None) -> str:
    """The folder a file ended in, from the data folder: "failed", "archive",
    "archive/2026-12-06", "duplicates/2026-12-06"."""
    if outcome == "failed":
        return "failed"
    if final_dir and final_dir.startswith(OUTSIDE):
        return final_dir.removeprefix(OUTSIDE)
    return f"archive/{final_dir}" if final_dir else "archive"
