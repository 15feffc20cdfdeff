"""Output for people: aligned tables, relative times, sizes, colour on a terminal only.

Colour only when the stream is a terminal and NO_COLOR is unset
(https://no-color.org); file names pass through ``escape_text`` so a name
holding an escape sequence cannot repaint the operator's terminal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from . import stamps
from .escaping import escape_text

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


class Console:
    """Where a command prints, and whether it may use colour."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour

    def paint(self, text: str, colour: str) -> str:
        if not self.colour or colour not in _COLOURS:
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        right: Sequence[int] = (),
        colours: Sequence[str | None] | None = None,
        indent: str = "  ",
    ) -> None:
        """Aligned columns; RIGHT: indexes of right-aligned (numeric) columns.

        COLOURS: one colour (or None) per row, applied after alignment so the
        escape codes never disturb the widths.
        """
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def fmt(cells: Sequence[str]) -> str:
            parts = [
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                for i, cell in enumerate(cells)
            ]
            return (indent + "  ".join(parts)).rstrip()

        self.line(self.paint(fmt(headers), "bold"))
        for n, row in enumerate(rows):
            colour = colours[n] if colours else None
            text = fmt(row)
            self.line(self.paint(text, colour) if colour else text)


def print_json(doc: Any, stream: TextIO | None = None) -> None:
    """One JSON document, indented, ASCII only (safe in any terminal or pipe)."""
    out = stream or sys.stdout
    out.write(json.dumps(doc, indent=2, ensure_ascii=True, sort_keys=False) + "\n")


def name(value: bytes | str | None) -> str:
    """A file name, printable on one line."""
    return "" if value is None else escape_text(value)


def ago(then: float | None, now: float | None = None) -> str:
    """A past moment as people say it: "just now", "42 s ago", "3 min ago", "2 days ago"."""
    if then is None:
        return "-"
    seconds = (time.time() if now is None else now) - then
    if seconds < 0:
        return "in " + span(-seconds)
    if seconds < 1:
        return "just now"
    return span(seconds) + " ago"


def span(seconds: float) -> str:
    """A duration, short: "850 ms", "42 s", "3 min", "5 h", "2 days"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def size(n: int | None) -> str:
    """Bytes as people read them: "980 B", "1.2 KiB", "3.4 MiB"."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def stamp(ts: float | None) -> str:
    """A local timestamp for tables: 2026-11-29 01:02:03."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def iso(ts: float | None) -> str | None:
    """A timestamp for JSON: ``stamps.iso`` (None stays None)."""
    return None if ts is None else stamps.iso(ts)


def parse_iso(text: str | None) -> float | None:
    """A timestamp written by ``iso`` back as epoch seconds (None stays None)."""
    return datetime.fromisoformat(text).timestamp() if text else None


def shorten(text: str, width: int) -> str:
    """TEXT on one line, cut to WIDTH with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 3, 1)] + "..."


__all__ = [
    "Console",
    "ago",
    "iso",
    "name",
    "parse_iso",
    "print_json",
    "shorten",
    "size",
    "span",
    "stamp",
]
