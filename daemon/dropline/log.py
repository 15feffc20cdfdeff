"""Logging: one structured event per transition, through structlog.

Aligned, human console lines on a terminal; one JSON object per line
otherwise (what journald and log shippers read).  Every string value passes
through ``escape_text`` first, so a file name holding a newline, an ANSI
escape or invalid UTF-8 cannot forge a log line or repaint a terminal.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from .escaping import escape_text, field_text
from .journal import JournalSender, stderr_is_journal
from .messages import describe
from .stamps import iso_now

Logger = structlog.stdlib.BoundLogger | Any

_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}


def _level_time_escape(
    _logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every string value escaped, then the level and the local time added: what
    structlog's add_log_level and TimeStamper(fmt="iso") add, in one processor
    (it runs for every event of every file)."""
    for key, value in event_dict.items():
        kind = type(value)
        if kind is bytes or (kind is str and not (value.isprintable() and "\\" not in value)):
            event_dict[key] = escape_text(value)
    event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
    event_dict["timestamp"] = iso_now()
    return event_dict


class _JournalRenderer:
    """Sends the event to journald with its fields and a sentence (messages.py) as
    MESSAGE; prints nothing itself."""

    def __init__(self, sender: JournalSender) -> None:
        self._sender = sender

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        fields = dict(event_dict)
        fields.pop("timestamp", None)  # the journal stamps every entry itself
        level = str(fields.pop("level", method))
        event = str(fields.pop("event", ""))
        message = describe(event, fields)
        fields["EVENT"] = event
        self._sender.send(message, level, fields)
        raise structlog.DropEvent


class _ConsoleRenderer:
    """structlog's console renderer, each list, mapping or flag of an event written
    as JSON (["a", "b"], true) rather than as Python writes it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        for key, value in event_dict.items():
            if isinstance(value, bool):
                event_dict[key] = field_text(value)
            elif isinstance(value, list | tuple | dict):
                # Compact, as the console shows it (quoted, as any text with quotes).
                event_dict[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return str(self._inner(logger, method, event_dict))


def _fallback(value: Any) -> Any:
    """How a value JSON does not know is written (as structlog's JSONRenderer does)."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else repr(value)


def _json_dumps() -> Callable[..., str]:
    """json.dumps for the JSON renderer, its encoder built once.

    json.dumps with any argument builds a new encoder for every call: at
    full speed that was a quarter of each event's cost.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain function
        return lambda value, **_kw: json.dumps(value, default=_fallback)
    # No circular-reference markers: an event is a flat dict of plain values.
    encode = make(
        None, _fallback, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return lambda value, **_kw: "".join(encode(value, 0))


class LineWriter:
    """Where rendered lines go: written at once, or held until the daemon's loop
    releases them.

    While held (``hold()``, the daemon's loop), every line is kept and the loop
    writes them with one write() at the end of each pass and before it waits
    (at full speed that is hundreds of lines per pass, and a write per line was
    a tenth of the loop's time).  The lines of the stage threads are held with
    them, so that the journal keeps their order ("stage.started" before what
    the stage says); the loop waits at most a second between passes.  A line is
    never written before the database has the step it reports; a kill -9 can
    lose the lines of the pass it interrupts, never a file.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._held: list[str] | None = None

    def msg(self, message: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(message)
                return
            self._out.write(message + "\n")
            self._out.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def hold(self) -> None:
        """From now on, hold every line until release()."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self) -> None:
        """Write the held lines, one write() for all of them."""
        with self._lock:
            if not self._held:
                return
            text = "\n".join(self._held) + "\n"
            self._held.clear()
            self._out.write(text)
            self._out.flush()


_writer: LineWriter | None = None
_journal: JournalSender | None = None  # set when the events go to journald
# The processors as configure() gave them to structlog (the very list: structlog
# keeps it, and capture_logs() empties and refills it in place), and the renderer.
_chain: list[Any] | None = None
_renderer: Any = None


def hold_lines() -> None:
    """Hold the log lines until release_lines() (the daemon's loop)."""
    if _writer is not None:
        _writer.hold()


def release_lines() -> None:
    """Write the lines held so far, and send the journal entries still waiting."""
    if _writer is not None:
        _writer.release()
    if _journal is not None:
        _journal.flush()


def journal_waiting() -> int:
    """Entries waiting for journald to read them (0 when the journal is not used)."""
    return _journal.waiting if _journal is not None else 0


def journal_behind() -> bool:
    """Whether so many entries wait for journald that the daemon should claim nothing."""
    return _journal is not None and _journal.behind()


def configure(log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process.

    ``auto``: the journal's native protocol when stderr is the journal,
    aligned console lines on a terminal, JSON lines otherwise.
    """
    global _writer, _journal, _chain, _renderer
    out = stream or sys.stderr
    use_console = log_format == "console" or (log_format == "auto" and out.isatty())
    writer = _writer = LineWriter(out)
    renderer: Any
    if _journal is not None:
        atexit.unregister(_journal.close)
        _journal = None
    if log_format == "auto" and stderr_is_journal(out):
        _journal = JournalSender(fallback=out)
        # At exit, what still waits gets a few seconds (within TimeoutStopSec=).
        atexit.register(_journal.close)
        renderer = _JournalRenderer(_journal)
    elif use_console:
        renderer = _ConsoleRenderer(
            structlog.dev.ConsoleRenderer(colors=out.isatty(), pad_event_to=22)
        )
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps())
    # Short on purpose: it runs for every event of every file (no context
    # variables or exception info are used, so their processors are left out).
    _chain, _renderer = [_level_time_escape, renderer], renderer
    structlog.configure(
        processors=_chain,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=True,
    )


def log_thread_failures() -> None:
    """A thread that ends with an exception is told as one event, ``thread.failed``
    (its name, the error, the traceback in one field), not as a traceback written
    to stderr a piece at a time: there it could land in the middle of another
    line, and that line's event would be lost to whoever reads the log."""
    import traceback

    log = get_logger()

    def hook(args: threading.ExceptHookArgs) -> None:
        error = "".join(traceback.format_exception_only(args.exc_type, args.exc_value)).strip()
        told = traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        log.error(
            "thread.failed",
            thread=args.thread.name if args.thread else "?",
            error=error,
            traceback="".join(told).rstrip(),
        )

    threading.excepthook = hook


def get_logger(**initial: Any) -> Any:
    """Return a bound logger carrying INITIAL fields."""
    return structlog.get_logger("dropline").bind(**initial)


class FileLog:
    """The log of the events every file has (claimed, its stages' starts and
    ends, archived or failed): LOG's processors and writer called directly,
    without structlog's wrapper.

    At full speed the loop logs two events per file and two per stage, and structlog's wrapper
    (copying the context, looking up the method, calling the chain) was about
    a third of each event's cost.  The line written is the one LOG writes:
    the same processors, in the same order, on the same fields.  LOG itself
    logs when it carries context of its own, or when the processors are no
    longer the ones configure() set (a test capturing events, say).
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        try:
            plain = not structlog.get_context(log)
        except AttributeError:  # not a structlog logger
            plain = False
        chain = _chain
        ours = plain and structlog.get_config()["processors"] is chain
        self._chain: list[Any] | None = chain if ours else None

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        chain, writer = self._chain, _writer
        # Configured again since, or emptied and refilled in place (capture_logs):
        # then structlog's way.
        if chain is None or chain is not _chain or writer is None or len(chain) != 2:
            getattr(self._log, method)(event, **fields)
            return
        escape, render = chain
        if render is not _renderer:
            getattr(self._log, method)(event, **fields)
            return
        fields["event"] = event  # after the fields, as structlog puts it
        try:
            line = render(writer, method, escape(writer, method, fields))
        except structlog.DropEvent:  # sent to the journal by the renderer itself
            return
        writer.msg(line)
