"""Measuring instruments: processes with their rusage, readiness, arrivals in archive/.

Everything here observes a subject from outside, the same way for dropline and
for the reference loops:

- ``Subject`` runs a command in its own session and reaps it with
  ``os.wait4`` in a thread, so its exit time is exact and its CPU time (its
  own plus that of every child it reaped) is available; its peak RSS is
  sampled from /proc (``RssSampler`` says why not from wait4).
- ``NotifyReady`` is a real ``AF_UNIX`` datagram socket handed over as
  ``NOTIFY_SOCKET``: ``READY=1`` is stamped on receipt, and the subject's CPU
  time so far is read from ``/proc`` at that moment, so that start-up and the
  work after it can be told apart.  It can also stall (stop reading, its
  queue full) as PID 1 does during a daemon-reload.  ``LineReady`` does the
  same for a subject that says it is ready by a line on stderr (inotifywait).
- ``ArchiveWatch`` stamps each name arriving in archive/ with inotify (a
  small ctypes binding), for latencies where a file's change time is too
  coarse to serve (``ctime_marks_renames`` checks that on the spot).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..harness import FILLER, fill_datagram_queue

CLK_TCK = os.sysconf("SC_CLK_TCK")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path: 108 bytes, the last a NUL

# inotify(7)
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def vm_hwm_kib(pid: int) -> int | None:
    """The peak resident set of PID since its exec (VmHWM), in KiB."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def group_members(pgid: int) -> list[int]:
    """The processes of process group PGID (from /proc: no CONFIG_PROC_CHILDREN needed)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # field 5 of proc(5), pgrp
            members.append(int(entry))
    return members


class RssSampler:
    """The peak RSS of a process with the processes of its group, sampled from /proc.

    ``ru_maxrss`` from wait4 cannot serve: at exec the kernel folds the
    pre-exec memory of the process into it, so a subject started by a big
    parent (pytest, the benchmark) would report the parent's size.  VmHWM
    starts afresh at exec and only grows: the last sample before exit misses
    only what grew in the last interval.

    A subject may be several processes at once (dropline and its mover, stage
    workers; inotifywait and its shell): each sample adds up the VmHWM of the
    group's living processes, and the peak is the largest such sum (an upper
    bound: each process's own peak, as if they all came at once).  The list
    of the group's processes is read less often than their VmHWM.
    """

    def __init__(self, pid: int, interval: float = 0.02, group_every: int = 50) -> None:
        self.pid = pid
        self.peak_kib: int | None = None
        self._members: list[int] = [pid]
        self._interval = interval
        self._group_every = group_every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def sample(self, group: bool = False) -> None:
        """Add up VmHWM of the group now (reading who is in it first with GROUP)."""
        if group:
            self._members = sorted({self.pid, *group_members(self.pid)})
        values = [vm_hwm_kib(pid) for pid in self._members]
        alive = [v for v in values if v is not None]
        if alive:
            with self._lock:
                self.peak_kib = max(self.peak_kib or 0, sum(alive))

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            # Also early on: a helper started by the subject (dropline's mover) is
            # counted even if the run is over within a second.
            self.sample(group=rounds in (5, 15) or rounds % self._group_every == 0)
            rounds += 1
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of PID so far (user + system, its threads and its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # Fields 14 to 17 of proc(5): utime, stime, cutime, cstime (after pid, comm: 11 to 14).
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


class ReadyWatch:
    """When a subject said it was ready (monotonic), and its CPU time at that moment."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.cpu_at: float | None = None
        self.pid: int | None = None
        self.on_ready: Callable[[], None] | None = None
        self._event = threading.Event()

    def attach(self, pid: int) -> None:
        """The process to sample when READY arrives."""
        self.pid = pid

    def _mark(self) -> None:
        if self.at is not None:
            return
        self.at = time.monotonic()
        if self.pid is not None:
            self.cpu_at = proc_cpu_seconds(self.pid)
        if self.on_ready is not None:
            self.on_ready()
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """True once ready; False after TIMEOUT seconds without it."""
        return self._event.wait(timeout)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables the subject needs to report readiness."""
        return {}

    def close(self) -> None:
        """Stop listening."""


class NotifyReady(ReadyWatch):
    """A bound datagram socket; the first ``READY=1`` on it marks readiness."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._own_dir: Path | None = None
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            # Too long for sockaddr_un (a deep BENCH_DIR): a short directory of its own.
            self._own_dir = Path(tempfile.mkdtemp(prefix="dlb-"))
            path = self._own_dir / "notify.sock"
        self.path = path
        self.messages: list[tuple[float, bytes]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._closed = threading.Event()
        self._reading = threading.Event()  # cleared while stalled
        self._reading.set()
        self._turn = threading.Lock()  # held by the reader around each read
        self._fillers: list[socket.socket] = []
        self.stalls: list[tuple[float, float]] = []  # (stalled, resumed), monotonic
        self._thread = threading.Thread(target=self._read, name="notify", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def _read(self) -> None:
        while not self._closed.is_set():
            if not self._reading.wait(0.05):
                continue
            with self._turn:
                if not self._reading.is_set():
                    continue
                try:
                    data = self._sock.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
            if data == FILLER:
                continue
            if b"READY=1" in data.split(b"\n"):
                self._mark()
            self.messages.append((time.monotonic(), data))

    def stall(self) -> None:
        """Stop reading with the queue full, as PID 1 does during a daemon-reload on a
        busy host (the other services' datagrams fill its queue meanwhile)."""
        self._reading.clear()
        with self._turn:  # the reader is between two reads and waits for resume()
            pass
        self._fillers += fill_datagram_queue(self.path)
        self.stalls.append((time.monotonic(), 0.0))

    def resume(self) -> None:
        """Read again (the fillers are dropped as they are read)."""
        if self.stalls and not self.stalls[-1][1]:
            self.stalls[-1] = (self.stalls[-1][0], time.monotonic())
        self._reading.set()

    def stall_for(self, seconds: float) -> None:
        """Stall, stay so SECONDS from the moment the queue is full, then resume."""
        self.stall()
        time.sleep(max(0.0, self.stalls[-1][0] + seconds - time.monotonic()))
        self.resume()

    def close(self) -> None:
        self._closed.set()
        self._reading.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for sender in self._fillers:
            sender.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                self._own_dir.rmdir()


class LineReady(ReadyWatch):
    """Readiness as a line on a pipe (the subject's stderr); the rest is kept as a tail."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.tail: list[str] = []
        self._thread: threading.Thread | None = None

    def follow(self, stream: IO[bytes]) -> None:
        """Read STREAM in a thread until it closes."""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.marker in line:
                self._mark()
            self.tail = [*self.tail[-19:], line]
        stream.close()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=2)


@dataclass(frozen=True)
class Exited:
    """How a subject ended: when (monotonic), its status and its rusage."""

    at: float
    code: int  # as subprocess reports it: negative for a signal
    cpu: float  # user + system seconds, its own and its reaped children's
    maxrss_kib: int | None  # the peak resident set of the process or of its group (sampled)


class Subject:
    """A command in its own session, reaped by ``os.wait4`` in a thread."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        ready: ReadyWatch,
        log_path: Path | None = None,
        stderr_to_ready: bool = False,
    ) -> None:
        self.argv = argv
        self.ready = ready
        self.log_path = log_path
        self.exited: Exited | None = None
        self._done = threading.Event()
        log = log_path.open("ab") if log_path is not None else None
        try:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.PIPE
                if stderr_to_ready
                else (subprocess.STDOUT if log is not None else subprocess.DEVNULL),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        ready.attach(self.proc.pid)
        self.rss = RssSampler(self.proc.pid)
        ready.on_ready = lambda: self.rss.sample(group=True)
        if stderr_to_ready and isinstance(ready, LineReady) and self.proc.stderr is not None:
            ready.follow(self.proc.stderr)
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        self._reaper.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        at = time.monotonic()
        self.rss.stop()
        code = os.waitstatus_to_exitcode(status)
        # Popen must not wait for a process reaped here.
        self.proc.returncode = code
        self.exited = Exited(
            at=at,
            code=code,
            cpu=usage.ru_utime + usage.ru_stime,
            maxrss_kib=self.rss.peak_kib,
        )
        self._done.set()

    def wait(self, timeout: float) -> Exited | None:
        """The exit, or None if the subject still runs after TIMEOUT seconds."""
        self._done.wait(timeout)
        return self.exited

    def send(self, sig: int) -> None:
        """Send SIG to the subject itself, unless it has already been reaped."""
        if not self._done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send SIG to the subject's process group (its session), while it is not reaped."""
        if not self._done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 10.0) -> Exited | None:
        """Wait up to TIMEOUT; then SIGKILL the group and reap it."""
        exited = self.wait(timeout)
        if exited is None:
            self.kill_group(signal.SIGKILL)
            exited = self.wait(10.0)
        self.ready.close()
        return exited

    def log_tail(self, lines: int = 20) -> str:
        """The end of what the subject wrote (its log file, or its stderr tail)."""
        if isinstance(self.ready, LineReady):
            return "\n".join(self.ready.tail[-lines:])
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


# --- files ------------------------------------------------------------------


def payload(name: str, size: int) -> bytes:
    """SIZE bytes that start with NAME, so that every file's content is its own."""
    head = name.encode() + b"\n"
    return head + b"." * max(0, size - len(head))


def create_files(directory: Path, names: Iterable[str], size: int) -> int:
    """Write each NAME in DIRECTORY (open, write, close: no fsync); how many were made."""
    made = 0
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        for name in names:
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, payload(name, size))
            finally:
                os.close(fd)
            made += 1
    finally:
        os.close(dir_fd)
    return made


def count_entries(directory: Path) -> int:
    """How many entries DIRECTORY holds (one scandir, no stat)."""
    with os.scandir(directory) as it:
        return sum(1 for _ in it)


def filesystem_of(path: Path) -> tuple[str, str]:
    """(type, device) of the filesystem holding PATH, from /proc/self/mounts."""
    target = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            device, mount, fstype = parts[0], _unescape(parts[1]), parts[2]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return best[1], best[2]


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/self/mounts (\\040 for a space...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


# --- arrivals ---------------------------------------------------------------


def ctime_marks_renames(scratch: Path, trials: int = 100, slack_ns: int = 50_000) -> str:
    """Whether a rename sets the file's ctime to the moment of the rename, finely.

    A file is written and closed (and never stat'ed, as a rename loop would
    not), a moment passes, then it is renamed between two clock readings.  Its
    ctime must fall between them (within SLACK_NS).  Returns "" if it always
    does, else what went wrong: with a coarse timestamp clock the ctime lags
    by up to a scheduler tick, too much for millisecond latencies.
    """
    src, dst = scratch / "src", scratch / "dst"
    src.mkdir(parents=True, exist_ok=True)
    dst.mkdir(parents=True, exist_ok=True)
    worst_early = worst_late = 0
    for i in range(trials):
        name = f"t{i}"
        create_files(src, [name], 16)
        time.sleep(0.0012)
        before = time.time_ns()
        os.rename(src / name, dst / name)
        after = time.time_ns()
        ctime = os.stat(dst / name).st_ctime_ns
        os.unlink(dst / name)
        worst_early = max(worst_early, before - ctime)
        worst_late = max(worst_late, ctime - after)
    src.rmdir()
    dst.rmdir()
    if worst_early > slack_ns or worst_late > slack_ns:
        return (
            f"a rename's ctime is off by up to {max(worst_early, worst_late) / 1e6:.2f} ms "
            f"(coarse timestamps)"
        )
    return ""


class _Libc:
    """inotify_init1 and inotify_add_watch through ctypes (the standard library has neither)."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(None, use_errno=True)
        self._lib.inotify_init1.argtypes = [ctypes.c_int]
        self._lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

    def init(self) -> int:
        fd = int(self._lib.inotify_init1(IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    def add_watch(self, fd: int, path: Path, mask: int) -> None:
        if self._lib.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))


class ArchiveWatch:
    """Stamps (monotonic ns) the first arrival of each name in a directory, by inotify."""

    def __init__(self, directory: Path) -> None:
        self.arrived: dict[str, int] = {}
        self.overflowed = False
        libc = _Libc()
        self._fd = libc.init()
        try:
            libc.add_watch(self._fd, directory, IN_MOVED_TO | IN_CREATE | IN_ONLYDIR)
        except OSError:
            os.close(self._fd)
            raise
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="archive-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._closed.is_set():
            if not poller.poll(50):
                continue
            data = os.read(self._fd, 1 << 16)
            now = time.monotonic_ns()
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0")
                offset = start + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                elif name:
                    self.arrived.setdefault(os.fsdecode(name), now)

    @property
    def count(self) -> int:
        return len(self.arrived)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        os.close(self._fd)
