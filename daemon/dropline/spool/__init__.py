"""The spool: where every file is moved durably, incoming/ -> working/ -> archive/
or failed/ (``folders.py``), with the one module of durable file operations
(``durable.py``), the mover process that does a batch's renames (``mover.py``)
and the helper-process plumbing it shares with the Python stages (``ipc.py``).

Never touches the database.
"""

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
from .names import WORKING_TEMP_PREFIX, fit_name, free_working_name, split_name

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
    "classify",
    "fit_name",
    "free_working_name",
    "fsync_dir",
    "open_folder",
    "rename_noreplace",
    "split_name",
]
