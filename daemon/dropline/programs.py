"""The programs of command stages, looked up as the service will look them up.

`dropline check` runs as root or as an operator, with a login shell's PATH;
the daemon runs as the unit's User= with the unit's PATH.  A program the
first finds and the second does not is retried (exit 127 or 126) for every
file, so check searches the service's PATH and judges every step (each
directory searched, symbolic links followed, the file executed, a script's
interpreter) by the service user's uid and groups, the way the kernel does.

Only what is certain is reported.  When the checking process cannot look at
a path itself, or an ACL on it may grant what the mode bits refuse, the
program is not judged and a note says so.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
import tempfile
from collections import deque
from dataclasses import dataclass

from .config import PLACEHOLDERS, Config, StageConfig
from .errors import ConfigError
from .service import SERVICE_PATH, SERVICE_USER

__all__ = ["SERVICE_PATH", "SERVICE_USER", "User", "check_programs", "service_user"]

_MAX_LINKS = 40  # the kernel's limit on symbolic links followed in one lookup
_SHEBANG_MAX = 256  # the kernel reads this much of a script for its "#!" line
_SEARCH, _EXEC, _READ = 1, 1, 4  # permission bits: x on a directory, x on a file, r
_HAS_PLACEHOLDER = re.compile(rf"\{{({'|'.join(PLACEHOLDERS)})\}}")


@dataclass(frozen=True)
class User:
    """Whose permissions a program is judged by."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]  # gid and supplementary groups
    is_self: bool  # the checking process itself: the kernel can be asked (os.access)

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})"


def service_user(name: str = SERVICE_USER) -> tuple[User, str | None]:
    """The user NAME, or, when there is none (a development machine), the current one.

    The second value is a note saying so, or None.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        me = _current_user()
        return me, f'no user "{name}" here; programs are judged for the current user, {me}'
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    myself = _current_user()
    is_self = myself.is_self and myself.uid == entry.pw_uid and myself.groups == groups
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, is_self), None


def _current_user() -> User:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    groups = frozenset({os.getegid(), *os.getgroups()})
    # os.access asks with the real ids; only when they are the effective ones too.
    is_self = os.getuid() == uid and os.getgid() == os.getegid()
    return User(name, uid, os.getegid(), groups, is_self)


def check_programs(
    config: Config, search_path: str, user: User
) -> tuple[list[ConfigError], list[str]]:
    """Every command stage whose program USER cannot start with SEARCH_PATH.

    Returns the errors (file, line, key of the program) and notes about the
    programs that could not be judged.
    """
    errors: list[ConfigError] = []
    notes: list[str] = []
    for p_index, pipeline in enumerate(config.pipelines):
        lists: tuple[tuple[str, tuple[StageConfig, ...]], ...] = (
            ("stages", pipeline.stages),
            ("on_failure", pipeline.on_failure),
        )
        for field_name, stages in lists:
            for index, stage in enumerate(stages):
                if stage.kind != "command":
                    continue
                key = f"pipelines[{p_index}].{field_name}[{index}].command[0]"
                line = stage.command_line or stage.line
                try:
                    problem = _program_problem(stage.command[0], search_path, user)
                except _UncertainError as exc:
                    notes.append(f"{config.path}:{line}: {key}: not judged: {exc}")
                    continue
                except OSError as exc:  # a name too long, an I/O error: not the program's verdict
                    notes.append(f"{config.path}:{line}: {key}: not judged: {exc}")
                    continue
                if problem is not None:
                    errors.append(ConfigError(problem, file=str(config.path), line=line, key=key))
    return errors, notes


def _program_problem(program: str, search_path: str, user: User) -> str | None:
    """Why USER cannot start PROGRAM with SEARCH_PATH as the daemon starts it; None if it can.

    Raises _UncertainError when that cannot be known for sure.
    """
    if _HAS_PLACEHOLDER.search(program):
        return None  # a different program per file: nothing to look up beforehand
    shown = f'program "{program}"'
    if "/" in program and not program.startswith("/"):
        return (
            f"{shown} is a relative path; commands run in the temporary directory, so it "
            "would be looked up there, not beside the configuration; write an absolute path"
        )
    try:
        _find(program, search_path, user)
    except _MissingError as exc:
        if "/" in program or exc.found:
            return f"{shown} cannot be started: {exc}"
        return (
            f"{shown} is not found in the service's PATH ({search_path}); "
            "install it there or write its absolute path"
        )
    except _DeniedError as exc:
        return f"{shown} cannot be started by {user}: {exc}"
    return None


class _MissingError(Exception):
    """exec would fail with ENOENT or ENOTDIR: exit 127."""

    def __init__(self, message: str, *, found: bool = False) -> None:
        super().__init__(message)
        self.found = found  # the program is there; something it needs is not


class _DeniedError(Exception):
    """exec would fail with EACCES (or the like): exit 126."""


class _UncertainError(Exception):
    """The checking process cannot tell."""


def _find(program: str, search_path: str, user: User) -> str:
    """The file exec would run for PROGRAM, searching SEARCH_PATH as subprocess does.

    Like execvp: a candidate that does not exist is skipped, one that is refused
    is remembered and the search goes on; the first refusal is what fails.
    """
    if "/" in program:
        return _runnable(program, search_path, user, depth=0)
    refused: _DeniedError | None = None
    missing: list[str] = []
    for entry in search_path.split(":"):
        # An empty or relative entry is relative to the working directory, where
        # commands run: the temporary directory.
        directory = os.path.join(tempfile.gettempdir(), entry)
        try:
            return _runnable(os.path.join(directory, program), search_path, user, depth=0)
        except _MissingError as exc:
            if exc.found:  # there, but its interpreter is missing: worth saying
                missing.append(str(exc))
        except _DeniedError as exc:
            refused = refused or exc
    if refused is not None:
        raise refused
    raise _MissingError("; ".join(missing) or "not found", found=bool(missing))


def _runnable(path: str, search_path: str, user: User, depth: int) -> str:
    """Check that USER can exec PATH; return the file reached."""
    real = _resolve(path, user)
    st = os.stat(real)
    if stat.S_ISDIR(st.st_mode):
        raise _DeniedError(f"{real} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise _DeniedError(f"{real} is not a regular file")
    if os.statvfs(real).f_flag & os.ST_NOEXEC:
        raise _DeniedError(f"{real} is on a filesystem mounted noexec")
    refusal = _refused(real, st, user, _EXEC)
    if refusal:
        raise _DeniedError(f"{real} ({refusal}) is not executable by it")
    if depth == 0:
        _check_script(real, st, search_path, user)
    return real


def _check_script(real: str, st: os.stat_result, search_path: str, user: User) -> None:
    """A "#!" script: its interpreter must run, and read the script."""
    try:
        with open(real, "rb") as file:
            head = file.read(_SHEBANG_MAX)
    except OSError:
        return  # the checker cannot read it; exec would tell, not us
    if not head.startswith(b"#!"):
        return
    refusal = _refused(real, st, user, _READ)
    if refusal:
        raise _DeniedError(
            f"{real} is a script its interpreter must read, and ({refusal}) it cannot"
        )
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    interpreter, _, argument = line.partition(b" ")
    interpreter = interpreter.split(b"\t", 1)[0]
    if not interpreter.startswith(b"/"):
        return  # relative to the working directory at exec: not judged
    shown = os.fsdecode(interpreter)
    try:
        _runnable(shown, search_path, user, depth=1)
    except _MissingError as exc:
        raise _MissingError(
            f"{real} is a script whose interpreter is missing: {exc}", found=True
        ) from None
    except _DeniedError as exc:
        raise _DeniedError(f"the interpreter of {real}, {shown}: {exc}") from None
    name = argument.strip(b" \t")
    if os.path.basename(shown) == "env" and name and not name.startswith(b"-") and b" " not in name:
        # "#!/usr/bin/env python3": env searches the same PATH.
        try:
            _find(os.fsdecode(name), search_path, user)
        except _MissingError:
            raise _MissingError(
                f"{real} is a script run by {os.fsdecode(line)}, and {os.fsdecode(name)} "
                f"is not found in the service's PATH ({search_path})",
                found=True,
            ) from None
        except _DeniedError as exc:
            raise _DeniedError(f"{real} runs {os.fsdecode(name)} through env: {exc}") from None


def _resolve(path: str, user: User) -> str:
    """Follow PATH component by component as the kernel does, judging each search."""
    todo = deque(part for part in path.split("/") if part)
    current = "/"
    links = 0
    while todo:
        name = todo.popleft()
        if name == ".":
            continue
        refusal = _refused(current, os.stat(current), user, _SEARCH)
        if refusal:
            raise _DeniedError(f"the directory {current} ({refusal}) cannot be searched by it")
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            raise _MissingError(f"{candidate} does not exist") from None
        except PermissionError:
            raise _UncertainError(f"this process may not look into {current}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise _MissingError(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            todo.extendleft(reversed([part for part in target.split("/") if part]))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            raise _MissingError(f"{candidate} is not a directory")
        current = candidate
    return current


def _refused(path: str, st: os.stat_result, user: User, bit: int) -> str:
    """Why USER may not read, search or execute PATH; "" when it may."""
    if user.is_self:
        mode = os.R_OK if bit == _READ else os.X_OK
        return "" if os.access(path, mode) else _describe(st)
    if user.uid == 0:
        # Root may do anything but execute a file that no one may execute.
        if bit == _EXEC and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o111:
            return _describe(st)
        return ""
    if st.st_uid == user.uid:
        allowed = st.st_mode >> 6
    elif st.st_gid in user.groups:
        allowed = st.st_mode >> 3
    else:
        allowed = st.st_mode
    if allowed & bit:
        return ""
    if _has_acl(path):
        raise _UncertainError(f"{path} has an access control list, which the mode bits do not show")
    return _describe(st)


def _has_acl(path: str) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError as exc:
        # Any other error: cannot tell, so assume it may have one.
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def _describe(st: os.stat_result) -> str:
    return (
        f"mode {stat.S_IMODE(st.st_mode):04o}, owner {_owner(st.st_uid)}, group {_group(st.st_gid)}"
    )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
