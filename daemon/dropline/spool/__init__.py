"""The spool: where every file is moved durably, incoming/ -> working/ -> archive/
or failed/ (``folders.py``), with the one module of durable file operations
(``durable.py``), the mover process that does a batch's renames (``mover.py``)
and the helper-process plumbing it shares with the Python stages (``ipc.py``).

Never touches the database.

The names below are imported at their first use (PEP 562): a worker process
imports ``ipc.py`` and a builtin ``names.py`` without the rest of the spool.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dirs import MAX_FOLDER_DEPTH, SUBDIRS, Settings
    from .durable import FULL_ERRNOS, fsync_dir, open_folder, rename_noreplace
    from .entries import (
        REFUSAL_KINDS,
        ChangedError,
        Entry,
        HeldOpenError,
        KeptByRuleError,
        Refusal,
        classify,
    )
    from .folders import Spool
    from .incoming import FolderWalk
    from .names import (
        WORKING_TEMP_PREFIX,
        archive_day,
        end_folder,
        fit_name,
        free_working_name,
        outside_of,
        split_name,
    )

_MODULE_OF = {
    "MAX_FOLDER_DEPTH": "dirs",
    "SUBDIRS": "dirs",
    "Settings": "dirs",
    "FULL_ERRNOS": "durable",
    "fsync_dir": "durable",
    "open_folder": "durable",
    "rename_noreplace": "durable",
    "REFUSAL_KINDS": "entries",
    "ChangedError": "entries",
    "Entry": "entries",
    "HeldOpenError": "entries",
    "KeptByRuleError": "entries",
    "Refusal": "entries",
    "classify": "entries",
    "Spool": "folders",
    "FolderWalk": "incoming",
    "WORKING_TEMP_PREFIX": "names",
    "archive_day": "names",
    "end_folder": "names",
    "fit_name": "names",
    "free_working_name": "names",
    "outside_of": "names",
    "split_name": "names",
}

__all__ = [
    "FULL_ERRNOS",
    "MAX_FOLDER_DEPTH",
    "REFUSAL_KINDS",
    "SUBDIRS",
    "WORKING_TEMP_PREFIX",
    "ChangedError",
    "Entry",
    "FolderWalk",
    "HeldOpenError",
    "KeptByRuleError",
    "Refusal",
    "Settings",
    "Spool",
    "archive_day",
    "classify",
    "end_folder",
    "fit_name",
    "free_working_name",
    "fsync_dir",
    "open_folder",
    "outside_of",
    "rename_noreplace",
    "split_name",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value
