"""Start a command's process: a new session, the three descriptors given and no other.

glibc's ``posix_spawn`` is called through ctypes: its child shares the
parent's memory until it execs (``clone(CLONE_VM | CLONE_VFORK)``, no page
tables copied), it can set the session, the working directory and close
every other descriptor, and ctypes lets go of the interpreter lock for the
call.  ``subprocess.Popen`` (vfork as well) holds that lock from the spawn
until the program has been exec'd (0.3 ms, about 0.2 of it its own work
around the spawn): the daemon's loop and the other workers stood still for
it, once per file.  Where that glibc (2.34 or later, for ``closefrom``) is not at hand,
or a descriptor to hand over is itself 0, 1 or 2, ``Popen`` does it.

This module must never run a shell, never let a descriptor other than the
three given reach the program, and never report a program it could not
start as started: the error of its ``exec`` is raised as an OSError, as
``Popen`` raises it.
"""

from __future__ import annotations

import array
import ctypes
import errno
import functools
import itertools
import operator
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Child", "start"]

_SETSIGDEF = 0x04  # glibc's <spawn.h> flags
_SETSIGMASK = 0x08
_SETSID = 0x80
# Opaque to us: room for glibc's posix_spawnattr_t (336 bytes on x86-64),
# posix_spawn_file_actions_t (80) and sigset_t (128) on any architecture.
_OPAQUE = 1024
# Reset to their default in the child, as Popen(restore_signals=True) does:
# Python ignores them, and a program expects its own default.
_RESTORED = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


@dataclass(frozen=True)
class Child:
    """A started command: its pid (its process group's id too) and how to reap it."""

    pid: int
    reap: Callable[[], int]  # waits; the status as Popen.returncode gives it (-N: signal N)


def start(
    argv: Sequence[bytes],
    *,
    env: Mapping[bytes, bytes],
    cwd: str | bytes | None,
    stdin: int,
    output: int,
) -> Child:
    """Run argv (its program looked up in env's PATH) in a new session, with
    stdin, and output as both stdout and stderr; raise OSError if it cannot
    be started, ValueError if an argument or variable holds a NUL."""
    spawner = _spawner()
    if spawner is None or min(stdin, output) <= 2:
        return _popen(argv, env, cwd, stdin, output)
    envp = _env_list(env)
    program = argv[0]
    last: OSError | None = None
    for candidate in _candidates(program, env):
        try:
            pid = spawner.spawn(candidate, argv, envp, cwd, stdin, output)
        except OSError as exc:
            # As execvpe: a miss tries the next directory, EACCES is reported
            # if nothing else is found, anything else at once.
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES) or b"/" in program:
                raise
            if last is None or exc.errno == errno.EACCES:
                last = exc
            continue
        return Child(pid, functools.partial(_reap, pid))
    if last is None:  # found nowhere: no process to learn it from
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(program))
    raise last


def _candidates(program: bytes, env: Mapping[bytes, bytes]) -> list[bytes]:
    """Where program may be: itself if it names a path, else in each of env's PATH."""
    if b"/" in program:
        return [program]
    found: list[bytes] = []
    for directory in os.get_exec_path(env):  # type: ignore[arg-type]  # it reads b"PATH" too
        path = os.path.join(os.fsencode(directory), program)
        # A stat here costs microseconds; a miss in posix_spawn costs a process.
        if os.path.exists(path):
            found.append(path)
    return found


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # SIGCHLD ignored: the kernel reaped it; Popen says 0 too
        return 0
    return os.waitstatus_to_exitcode(status)


def _env_list(env: Mapping[bytes, bytes]) -> list[bytes]:
    """env as execve wants it, refused as Popen refuses it."""
    if not all(env) or b"=" in b"".join(env):
        raise ValueError("illegal environment variable name")
    return list(map(b"=".join, env.items()))


def _popen(
    argv: Sequence[bytes],
    env: Mapping[bytes, bytes],
    cwd: str | bytes | None,
    stdin: int,
    output: int,
) -> Child:
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        close_fds=True,
        start_new_session=True,
    )
    return Child(proc.pid, proc.wait)


class _Strings:
    """A NULL-ended char *[] of items, as one block of bytes and one table of
    addresses into it: built in a few calls, where a ctypes array of c_char_p
    converts each item apart (tens of microseconds for an environment)."""

    def __init__(self, items: Sequence[bytes]) -> None:
        blob = b"\0".join(items) + b"\0"
        if blob.count(0) != max(len(items), 1):
            # A NUL inside an item would cut it short without a word.
            raise ValueError("embedded null byte")
        self._block = ctypes.create_string_buffer(blob, len(blob))
        base = ctypes.addressof(self._block)
        sizes = map(operator.add, map(len, items), itertools.repeat(1))  # each with its NUL
        starts = itertools.accumulate(sizes, initial=base)
        self._table = array.array("L", itertools.islice(starts, len(items)))
        self._table.append(0)

    @property
    def address(self) -> int:
        """Where the table starts: valid while this object lives."""
        return self._table.buffer_info()[0]


class _Spawner:
    """glibc's posix_spawn, with the attributes every command shares built once."""

    def __init__(self, libc: ctypes.CDLL, quick: ctypes.PyDLL) -> None:
        self._libc = libc
        # The file actions' calls only fill in memory: made holding the lock, so
        # that the loop is not handed the lock, and the worker made to wait for
        # it back, six times a command.
        self._quick = quick
        libc.posix_spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        for name in ("adddup2", "addchdir_np", "addclosefrom_np"):
            getattr(quick, f"posix_spawn_file_actions_{name}")  # AttributeError: too old
        self._attr = ctypes.create_string_buffer(_OPAQUE)
        self._sigdefault = ctypes.create_string_buffer(_OPAQUE)
        self._sigmask = ctypes.create_string_buffer(_OPAQUE)
        _check(libc.posix_spawnattr_init(self._attr))
        _check(libc.sigemptyset(self._sigmask))
        _check(libc.sigemptyset(self._sigdefault))
        for sig in _RESTORED:
            _check(libc.sigaddset(self._sigdefault, int(sig)))
        _add_internal(self._sigdefault)
        _check(libc.posix_spawnattr_setsigdefault(self._attr, self._sigdefault))
        # The program starts with no signal blocked, whatever the calling thread blocks.
        _check(libc.posix_spawnattr_setsigmask(self._attr, self._sigmask))
        flags = ctypes.c_short(_SETSID | _SETSIGDEF | _SETSIGMASK)
        _check(libc.posix_spawnattr_setflags(self._attr, flags))

    def spawn(
        self,
        path: bytes,
        argv: Sequence[bytes],
        envp: Sequence[bytes],
        cwd: str | bytes | None,
        stdin: int,
        output: int,
    ) -> int:
        libc = self._quick
        args, environ = _Strings(argv), _Strings(envp)
        actions = ctypes.create_string_buffer(_OPAQUE)
        _check(libc.posix_spawn_file_actions_init(actions))
        try:
            for fd, target in ((stdin, 0), (output, 1), (output, 2)):
                _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target))
            if cwd is not None:
                directory = os.fsencode(cwd)
                if b"\0" in directory:
                    raise ValueError("embedded null byte")
                _check(libc.posix_spawn_file_actions_addchdir_np(actions, directory))
            _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3))
            pid = ctypes.c_int()
            # The lock is let go for this call: the clone, and the wait until the
            # child has exec'd its program or failed to.
            code = self._libc.posix_spawn(
                ctypes.byref(pid), path, actions, self._attr, args.address, environ.address
            )
        finally:
            libc.posix_spawn_file_actions_destroy(actions)
        if code:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return pid.value


def _add_internal(sigset: ctypes.Array[ctypes.c_char]) -> None:
    """Add glibc's own signals (32 and 33, below SIGRTMIN) to sigset.

    sigaddset refuses them, and without them in the set posix_spawn leaves
    them ignored in the child, and so in the program: Popen leaves them alone.
    """
    words = ctypes.c_ulong * (_OPAQUE // ctypes.sizeof(ctypes.c_ulong))
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    view = words.from_buffer(sigset)
    for sig in range(32, signal.SIGRTMIN):
        view[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)


def _check(code: int) -> None:
    if code:
        raise OSError(code, os.strerror(code))


_state: list[_Spawner | None] = []
_state_lock = threading.Lock()


def _spawner() -> _Spawner | None:
    """The glibc spawner, made at first use; None where there is none."""
    with _state_lock:
        if not _state:
            _state.append(_load())
        return _state[0]


def _load() -> _Spawner | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        if array.array("L").itemsize != ctypes.sizeof(ctypes.c_void_p):
            return None  # _Strings keeps addresses as unsigned longs
        # The interpreter's own symbols, libc's among them: no search for the library.
        return _Spawner(ctypes.CDLL(None), ctypes.PyDLL(None))
    except (OSError, AttributeError, ValueError):
        return None
