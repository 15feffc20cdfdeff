"""The exception tree of dropline: one base, a few kinds, each with a meaning.

Code catches these by kind; nothing else in dropline raises bare Exception.
"""

from __future__ import annotations


class DroplineError(Exception):
    """Base of every error that dropline raises on purpose."""


class ConfigError(DroplineError):
    """The configuration (or the command line) cannot be used.

    The message names the file, the line, the key, what was wrong and what is
    allowed.  The command line prints it without a traceback and exits 2.
    """

    def __init__(self, message: str, *, file: str = "", line: int = 0, key: str = "") -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = file
        if file and line:
            where = f"{file}:{line}"
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class HostError(DroplineError):
    """The host is not fit to run on: a directory is missing, unwritable or insecure.

    Like ConfigError it exits 2, because restarting will not help.
    """


class PermanentError(DroplineError):
    """Raised by a stage when the file itself is bad: it fails at once, no retries."""


class RetriableError(DroplineError):
    """Raised by a stage whose attempt failed in a way worth retrying (a command's
    exit status, a webhook not delivered); its message is complete operator
    text, recorded as it is, without the exception's class name."""


class UnavailableError(RetriableError):
    """Raised by a stage that cannot work for any file now, whichever it is given (its
    program cannot be started, its service refuses everyone): the pipeline holds at
    once (loop/gates.py), and the attempt is not counted against the file."""


class FatalIOError(DroplineError):
    """A write or fsync failed on the spool or the state database.

    After such an error the state on disk is unknown (a retried fsync can report
    success without having written anything), so the daemon exits non-zero and
    lets systemd restart it; start-up recovery then reconciles the folders.
    """


class DiskFullError(DroplineError):
    """A folder's filesystem is full (ENOSPC/EDQUOT): pause, lose nothing, resume later.

    Unlike FatalIOError nothing is in doubt: the step that failed did not
    happen, and it is tried again once space returns.
    """


class StateLockedError(DroplineError):
    """Another dropline process holds the lock on the state directory."""


class DataLockedError(DroplineError):
    """Another dropline process, of another state, holds the lock on the data folder (exit 1).

    Not a StateLockedError: `dropline retry` takes that one to mean "a daemon
    runs on this state, ask it", which no daemon of this state would answer.
    """


class StateUnavailableError(DroplineError):
    """The state database cannot be read: missing, unreadable, or not dropline's.

    The read commands (status, history) print it and exit 1.
    """


class NotFoundError(DroplineError):
    """A command named an item or a file the state database does not know (exit 1)."""


class DaemonUnavailableError(DroplineError):
    """No daemon runs to ask, or it did not answer in time (`dropline reload`, exit 1)."""
