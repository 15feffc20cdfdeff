"""Logging: one structured event per transition, through structlog.

Aligned, human console lines on a terminal; one JSON object per line
otherwise (what journald and log shippers read).  Every string value passes
through ``escape_text`` first, so a file name holding a newline, an ANSI
escape or invalid UTF-8 cannot forge a log line or repaint a terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from .journal import JournalSender, stderr_is_journal

Logger = structlog.stdlib.BoundLogger | Any

_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_text(value: str | bytes) -> str:
    """Return VALUE printable on one line: controls, surrogates and bad bytes escaped.

    Bytes are decoded as UTF-8 with surrogateescape, so an invalid byte shows as
    ``\\xff`` rather than being lost or crashing the encoder.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if value.isprintable() and "\\" not in value:
        return value
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def _escape_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        kind = type(value)
        if kind is bytes or (kind is str and not (value.isprintable() and "\\" not in value)):
            event_dict[key] = escape_text(value)
    return event_dict


class _JournalRenderer:
    """Sends the event to journald with its fields; prints nothing itself."""

    def __init__(self, sender: JournalSender) -> None:
        self._sender = sender
        self._console = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=22)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        fields = dict(event_dict)
        fields.pop("timestamp", None)  # the journal stamps every entry itself
        level = str(fields.pop("level", method))
        message = self._console(logger, method, dict(fields))
        fields["EVENT"] = fields.pop("event", "")
        self._sender.send(str(message), level, fields)
        raise structlog.DropEvent


def configure(log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process.

    ``auto``: the journal's native protocol when stderr is the journal,
    aligned console lines on a terminal, JSON lines otherwise.
    """
    out = stream or sys.stderr
    use_console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: Any
    if log_format == "auto" and stderr_is_journal(out):
        renderer = _JournalRenderer(JournalSender(fallback=out))
    elif use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), pad_event_to=22)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        # Short on purpose: it runs for every event of every file (no context
        # variables or exception info are used, so their processors are left out).
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            _escape_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # WriteLogger: one write() per event (PrintLogger makes two: line, then newline).
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def get_logger(**initial: Any) -> Any:
    """Return a bound logger carrying INITIAL fields."""
    return structlog.get_logger("dropline").bind(**initial)
