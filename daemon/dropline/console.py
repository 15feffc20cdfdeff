"""Output for people: aligned tables, relative times, sizes, colour on a terminal only.

Colour only when the stream is a terminal and NO_COLOR is unset
(https://no-color.org); file names pass through ``escape_text`` so a name
holding an escape sequence cannot repaint the operator's terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from . import stamps
from .escaping import escape_text

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


class Console:
    """Where a command prints, and whether it may use colour."""

    def __init__(
        self, stream: TextIO | None = None, colour: bool | None = None, width: int | None = None
    ) -> None:
        self.stream = stream or sys.stdout
        tty = self.stream.isatty()
        if colour is None:
            colour = tty and not os.environ.get("NO_COLOR")
        self.colour = colour
        # Tables fit WIDTH columns: the terminal's ($COLUMNS first, as shutil reads
        # it); into a pipe, only when $COLUMNS asks (a script reads --json anyway).
        if width is None and (tty or os.environ.get("COLUMNS")):
            width = shutil.get_terminal_size().columns
        self.width = width

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

        Widths count what a terminal shows (a wide character two columns, a
        combining one none).  Wider than the console, the widest text columns
        give way, their cells cut with "...".  COLOURS: one colour (or None)
        per row, applied after alignment so the escape codes never disturb
        the widths.
        """
        widths = [display_width(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], display_width(cell))
        if self.width is not None:
            _fit(widths, [display_width(h) for h in headers], right, self.width - len(indent))

        def fmt(cells: Sequence[str]) -> str:
            parts = [
                pad(clip(cell, widths[i]), widths[i], right=i in right)
                for i, cell in enumerate(cells)
            ]
            return (indent + "  ".join(parts)).rstrip()

        self.line(self.paint(fmt(headers), "bold"))
        for n, row in enumerate(rows):
            colour = colours[n] if colours else None
            text = fmt(row)
            self.line(self.paint(text, colour) if colour else text)


_NARROWEST = 8  # a text column is never cut narrower than this (or its header)


def _fit(widths: list[int], headers: list[int], right: Sequence[int], room: int) -> None:
    """Narrow the widest text columns (never the numbers) until the row fits ROOM."""
    while sum(widths) + 2 * (len(widths) - 1) > room:
        text = [i for i in range(len(widths)) if i not in right]
        floor = {i: max(_NARROWEST, headers[i]) for i in text}
        wide = [i for i in text if widths[i] > floor[i]]
        if not wide:
            return  # as narrow as it goes: the terminal wraps the rest
        widest = max(wide, key=lambda i: widths[i])
        over = sum(widths) + 2 * (len(widths) - 1) - room
        widths[widest] = max(floor[widest], widths[widest] - over)


def display_width(text: str) -> int:
    """The columns TEXT takes in a terminal: two for a wide (East Asian) character,
    none for a combining mark or a format character, one for the others."""
    if text.isascii():
        return len(text)
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def clip(text: str, width: int) -> str:
    """TEXT cut to WIDTH columns, with "..." where it was cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = display_width(ch)
        if used + w > width - 3:
            break
        out.append(ch)
        used += w
    return "".join(out) + "..."[: max(0, width - used)]


def pad(text: str, width: int, *, right: bool = False) -> str:
    """TEXT filled with spaces to WIDTH columns (on the left when RIGHT)."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


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
    "clip",
    "display_width",
    "iso",
    "name",
    "pad",
    "parse_iso",
    "print_json",
    "shorten",
    "size",
    "span",
    "stamp",
]
