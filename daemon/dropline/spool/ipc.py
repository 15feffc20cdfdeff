"""Helper processes: a fresh interpreter on two pipes, and length-prefixed
pickled messages between it and the daemon.

Used by the mover (``spool/mover.py``) and by the workers of Python stages
(``isolation.py``).  A fresh interpreter (``python -m MODULE``), never a fork
of the threaded daemon with its open database; two pipes, not
multiprocessing: a child whose parent dies before it has read its first
request then ends quietly, where multiprocessing's spawn prints a traceback
into the daemon's log.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a helper itself never starts one: it need not import subprocess
    import subprocess

_LENGTH = struct.Struct("!I")


class Pipe:
    """Pickled messages over one end of a pipe, each behind its length."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LENGTH.pack(len(data)) + data)
        while view:
            view = view[os.write(self.fd, view) :]

    def recv(self) -> Any:
        """The next message; EOFError once the other end is closed."""
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        # Only between the daemon and a helper it started: both ends are ours.
        return pickle.loads(self._read(length))  # noqa: S301

    def poll(self, timeout: float) -> bool:
        """Whether something (a message, or the end) can be read within TIMEOUT seconds."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.fd, min(size, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def start_helper(
    module: str, args: Sequence[str], pass_fds: Sequence[int] = ()
) -> tuple[subprocess.Popen[bytes], Pipe, Pipe]:
    """Start ``python -m MODULE REQUESTS ANSWERS *ARGS``: the process, the pipe the
    daemon sends requests on and the pipe it reads answers from.

    The child gets the two pipe ends (as descriptor numbers, its first two
    arguments), PASS_FDS, the daemon's import path and no stdin.  OSError if it
    cannot be started (no pipe end is left open then).
    """
    import subprocess

    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    argv = [sys.executable, "-m", module, str(req_r), str(res_w), *args]
    try:
        proc = subprocess.Popen(
            argv, pass_fds=(req_r, res_w, *pass_fds), stdin=subprocess.DEVNULL, env=env
        )
    except OSError:
        for fd in (req_w, res_r):
            os.close(fd)
        raise
    finally:
        os.close(req_r)
        os.close(res_w)
    return proc, Pipe(req_w), Pipe(res_r)
