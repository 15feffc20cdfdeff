"""Host checks: the folders and files the configuration names, as this host has them.

At start-up: data_dir and state_db usable (the spool folders created), the
metrics textfile's folder writable, and a folder tree that droppers cannot
reach beyond incoming/.  Anyone who may write into working/, archive/,
failed/ or the state directory could swap a file under a running stage or
forge the record, so start-up refuses such a tree (exit 2) and names the
path.  Free space is checked while running: below ``min_free_space`` the
daemon stops claiming (like Postfix's queue_minfree) and resumes by itself
when space returns.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError, HostError
from .model import Config, MetricsConfig, PipelineConfig

SPOOL_DIRS: tuple[str, ...] = ("incoming", "working", "archive", "failed")


def check_paths(config: Config) -> None:
    """Check that data_dir and state_db are usable, creating the spool folders.

    data_dir must be an existing directory dropline can write to; its
    incoming/, working/, archive/ and failed/ are created if missing.  The
    directory of state_db must exist and be writable (SQLite puts its journal
    beside the database), and state_db, if it exists, must be a regular file
    dropline can read and write.  Problems raise ConfigError pointing at the
    line of the key in the configuration file.
    """
    file = str(config.path)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, line=config.lines.get(key, 0), key=key)

    data_dir = config.data_dir
    if not data_dir.exists():
        raise fail("data_dir", f"{data_dir} does not exist; expected an existing directory")
    if not data_dir.is_dir():
        raise fail("data_dir", f"{data_dir} is not a directory; expected a directory")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise fail(
            "data_dir", f"{data_dir} is not writable; expected a directory dropline can write to"
        )
    for sub in SPOOL_DIRS:
        folder = data_dir / sub
        try:
            # No chmod afterwards: group access to incoming/ is the operator's
            # (or tmpfiles.d's) decision, and the umask is respected.
            folder.mkdir(mode=0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise fail("data_dir", f"cannot create {folder}: {exc.strerror}") from None
        if not folder.is_dir():
            raise fail("data_dir", f"{folder} is not a directory; expected the spool folder {sub}/")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise fail(
                "data_dir", f"{folder} is not writable; expected a directory dropline can write to"
            )
    _check_end_folders(config)

    state_db = config.state_db
    parent = state_db.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise fail(
            "state_db",
            f"the directory of {state_db}, {parent}, {problem}; expected an existing directory",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(
            "state_db",
            f"{parent} is not writable; SQLite needs to create files beside {state_db.name}",
        )
    if state_db.exists() or state_db.is_symlink():
        if not state_db.is_file():
            raise fail(
                "state_db", f"{state_db} exists but is not a regular file; expected a database file"
            )
        if not os.access(state_db, os.R_OK | os.W_OK):
            raise fail("state_db", f"{state_db} is not readable and writable by dropline")

    if config.metrics is not None and config.metrics.textfile is not None:
        _check_textfile(config, config.metrics)


def _check_end_folders(config: Config) -> None:
    """The folders pipelines name for their duplicates (``duplicates_to``): a real
    folder if there; made by the daemon at the first duplicate otherwise (as its
    user, durably: spool/dirs.py), never here, where a command run as root would
    make it root's."""
    for name, pipeline in config.end_folders.items():
        folder = config.data_dir / name
        problem = ""
        if folder.is_symlink():
            problem = "is a symbolic link; expected a real folder (never followed)"
        elif folder.exists() and not folder.is_dir():
            problem = "is not a directory; expected a folder for the duplicates"
        elif folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            problem = "is not writable; expected a directory dropline can write to"
        if problem:
            line, key = _duplicates_to(config, pipeline)
            raise ConfigError(f"{folder} {problem}", file=str(config.path), line=line, key=key)


def _duplicates_to(config: Config, pipeline: PipelineConfig) -> tuple[int, str]:
    """The line and the key of PIPELINE's duplicates_to, for a message about its folder."""
    return (
        pipeline.duplicates_to_line,
        f"pipelines[{config.pipelines.index(pipeline)}].duplicates_to",
    )


def _check_textfile(config: Config, metrics: MetricsConfig) -> None:
    """The textfile is written as a temporary file beside it, then renamed over it."""
    assert metrics.textfile is not None
    textfile, folder = metrics.textfile, metrics.textfile.parent

    def fail(message: str) -> ConfigError:
        line = metrics.lines.get("textfile", 0)
        return ConfigError(message, file=str(config.path), line=line, key="metrics.textfile")

    if not folder.is_dir():
        problem = "is not a directory" if folder.exists() else "does not exist"
        raise fail(
            f"the directory of {textfile}, {folder}, {problem}; expected an existing directory"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise fail(
            f"{folder} is not writable; dropline writes {textfile.name} there through "
            "a temporary file and a rename"
        )
    if (textfile.exists() or textfile.is_symlink()) and not textfile.is_file():
        raise fail(f"{textfile} exists but is not a regular file; expected a file dropline owns")


def _writable_by_others(path: Path) -> str:
    st = os.stat(path, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if st.st_uid not in (0, os.geteuid()):
        # Its owner could chmod it at will.
        return f"owned by uid {st.st_uid}, neither the dropline user nor root"
    who = []
    if st.st_mode & stat.S_IWGRP:
        who.append("its group")
    if st.st_mode & stat.S_IWOTH:
        who.append("everyone")
    return " and ".join(f"writable by {w}" for w in who)


def check_host(config: Config) -> list[str]:
    """Raise HostError for an insecure tree (naming the key, and its line, that
    brings the folder in); return notes worth printing."""
    data = (config.lines.get("data_dir", 0), "data_dir")
    protected = [(p, data) for p in (config.working, config.archive, config.failed)]
    protected.append((config.state_db.parent, (config.lines.get("state_db", 0), "state_db")))
    for name, pipeline in config.end_folders.items():
        if (path := config.data_dir / name).exists():
            protected.append((path, _duplicates_to(config, pipeline)))
    for path, (line, key) in protected:
        problem = _writable_by_others(path)
        if problem:
            where = f"{config.path}:{line}: {key}: " if line else ""
            raise HostError(
                f"{where}{path} is {problem}: only the dropline user may write there "
                f"(chmod g-w,o-w {path})"
            )
    notes = []
    st = os.stat(config.incoming)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        notes.append(f"note: {config.incoming} is writable by everyone")
    return notes


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def free_space_problem(config: Config) -> str:
    """Which folder's filesystem has less than min_free_space free, if any ("" if none)."""
    seen: set[int] = set()
    for label, path in (
        ("incoming/", config.incoming),
        ("working/", config.working),
        ("archive/", config.archive),
        ("failed/", config.failed),
        ("the state directory", config.state_db.parent),
    ):
        try:
            st = os.statvfs(path)
            dev = os.stat(path).st_dev
        except OSError as exc:
            return f"cannot check free space of {path}: {exc.strerror}"
        if dev in seen:
            continue
        seen.add(dev)
        free = st.f_bavail * st.f_frsize
        if free < config.min_free_space:
            return (
                f"{_human(free)} free on the filesystem of {label} ({path}), "
                f"below min_free_space {_human(config.min_free_space)}"
            )
    return ""
