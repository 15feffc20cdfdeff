"""``dropline reload``: the running daemon reads its configuration again, and says how it went.

It is the unit's ExecReload=.  systemd 252 has no way for a daemon to report
a reload it refused, so this command reports it: exit 0 only when the daemon
applied the file, non-zero with the error otherwise, and its output lands in
the journal beside the daemon's (``systemctl status`` shows both).

The channel is the state database, as for ``dropline retry``: the command
leaves a request row and polls for the daemon's answer in it.  It needs no
socket, no signal and no shared /tmp, so it works the same by hand and under
the hardened unit (ExecReload= runs as the daemon's user in its sandbox,
where the state directory is the one place both may write).  Each request
is answered by a reading of the file made after the request was left: the
verdict is the daemon's, about the file as it then was (it can change after
this command checked it), and two reloads at once each get theirs.

The file is checked here first.  When it does not load, the state database
it names is unknown and no request can be left: the error is the file's own
(the daemon would read the same file with the same code).  With ``--pid``
(systemd's $MAINPID) the daemon is then sent SIGHUP all the same, so it
reads the file too, logs ``config.rejected`` and shows the refusal in
STATUS=.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, load_config
from ..errors import ConfigError, DaemonUnavailableError, StateLockedError
from ..reloading import KIND, Verdict
from ..state import Database, RequestQueue, acquire_lock

_POLL = 0.05  # seconds between looks for the daemon's answer
_ALIVE_EVERY = 0.5  # seconds between looks at whether the daemon still runs


@dataclass(frozen=True)
class Outcome:
    """What the command found: the daemon's verdict, or the file's own error."""

    verdict: Verdict
    asked: bool  # the verdict is the daemon's (else the file's own error, found here)
    signalled: int | None = None  # the pid sent SIGHUP when no request could be left


def _is_daemon(pid: int) -> bool:
    """Whether PID is a `dropline run` process (never signal anything else: SIGHUP
    ends most programs)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        # Gone, or hidden: under the unit (ProtectProc=invisible) ExecReload= sees
        # no other process in /proc, not even the daemon of the same user.  A
        # hidden process that we may signal is the one systemd named ($MAINPID).
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    except OSError:
        return False
    return b"run" in args and any(b"dropline" in arg for arg in args)


def _hup(pid: int | None) -> int | None:
    """SIGHUP to PID if it is a dropline daemon; the pid signalled, or None."""
    if pid is None or not _is_daemon(pid):
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return None
    return pid


def _daemon_runs(config: Config) -> bool:
    """Whether a daemon holds the lock on CONFIG's state directory (a probe, as
    `dropline retry` makes: a daemon starting meanwhile waits for it a moment)."""
    try:
        fd = acquire_lock(config.state_db)
    except StateLockedError:
        return True
    except PermissionError:
        # Not "no daemon runs": whether one does cannot be told from here (a member of
        # dropline-readers, say, may not open the folder); the reason goes out as is.
        raise
    except OSError:  # no state directory: nothing runs on it
        return False
    os.close(fd)
    return False


def _ask(config: Config, wait: float) -> Verdict:
    """Leave a reload request and wait (up to WAIT seconds) for the daemon's verdict."""
    db = Database(config.state_db)
    requests = RequestQueue(db)
    try:
        with db.transaction():
            [request] = requests.add_requests(KIND, [str(config.path)], time.time())
        deadline = time.monotonic() + wait
        next_alive = time.monotonic() + _ALIVE_EVERY
        while True:
            answer = requests.request_results([request]).get(request)
            if answer is not None:
                return Verdict.from_json(answer)
            now = time.monotonic()
            gone = now >= next_alive and not _daemon_runs(config)
            if gone or now > deadline:
                why = "the daemon stopped" if gone else f"no answer within {wait:g} s"
                if requests.withdraw_request(request, f"withdrawn: {why}", time.time()):
                    if gone:
                        raise DaemonUnavailableError(
                            "the daemon stopped before it answered the reload; "
                            "the configuration applies when it starts again"
                        )
                    raise DaemonUnavailableError(
                        f"the daemon did not answer the reload within {wait:g} s "
                        "(see its log: journalctl -u dropline); the request was withdrawn"
                    )
                continue  # answered just now: read it
            if now >= next_alive:
                next_alive = now + _ALIVE_EVERY
            time.sleep(_POLL)
    finally:
        db.close()


def run(config_path: str, pid: int | None, wait: float) -> Outcome:
    """Check the file, then have the daemon reload it; its verdict, or the file's error.

    Raises DaemonUnavailableError when no daemon can be asked or it does not
    answer in time.
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return Outcome(Verdict(False, error=str(exc), config=config_path), False, _hup(pid))
    if _daemon_runs(config):
        return Outcome(_ask(config, wait), True)
    state_dir = config.state_db.parent
    signalled = _hup(pid)
    if signalled is not None:
        # A daemon runs, but not on the state this file names: state_db changed.
        error = ConfigError(
            f"no dropline daemon runs on the state in {state_dir}, but pid {signalled} is "
            "a dropline daemon: state_db cannot change on reload; restart dropline",
            file=str(config.path),
            line=config.lines.get("state_db", 0),
            key="state_db",
        )
        return Outcome(Verdict(False, error=str(error), config=str(config.path)), False, signalled)
    raise DaemonUnavailableError(
        f"no dropline daemon runs on the state in {state_dir} (its lock is free): "
        f"nothing to reload; {config.path} is valid and applies when dropline starts"
    )


__all__ = ["Outcome", "run"]
