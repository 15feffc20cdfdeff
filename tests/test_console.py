"""Console output: relative times, sizes, aligned tables, colour only on a terminal."""

from __future__ import annotations

import io
import os
import pty

import pytest

from dropline import console as c


def test_relative_times_read_as_people_say_them() -> None:
    now = 1_000_000.0
    assert c.ago(now - 0.2, now) == "just now"
    assert c.ago(now - 42, now) == "42 s ago"
    assert c.ago(now - 180, now) == "3 min ago"
    assert c.ago(now - 5 * 3600, now) == "5 h ago"
    assert c.ago(now - 3 * 86400, now) == "3 days ago"
    assert c.ago(now + 5, now) == "in 5.0 s"
    assert c.ago(None, now) == "-"
    assert c.span(0.0042) == "4 ms"


def test_sizes() -> None:
    assert c.size(980) == "980 B"
    assert c.size(1536) == "1.5 KiB"
    assert c.size(3 * 1024 * 1024) == "3.0 MiB"
    assert c.size(None) == "-"


def test_table_columns_align_and_numbers_go_right() -> None:
    out = io.StringIO()
    c.Console(out, colour=False).table(
        ["NAME", "COUNT"], [["a", "1"], ["longer-name", "1,234"]], right=(1,)
    )
    lines = out.getvalue().splitlines()
    assert lines == [
        "  NAME         COUNT",
        "  a                1",
        "  longer-name  1,234",
    ]


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert c.Console(io.StringIO()).colour is False
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert c.Console(tty).colour is True
            monkeypatch.setenv("NO_COLOR", "1")
            assert c.Console(tty).colour is False
    finally:
        os.close(master)
        os.close(slave)
    painted = c.Console(io.StringIO(), colour=True).paint("failed", "red")
    assert painted == "\x1b[31mfailed\x1b[0m"


def test_hostile_names_cannot_repaint_the_terminal() -> None:
    assert c.name(b"evil\x1b[2Jname\n.csv") == "evil\\x1b[2Jname\\n.csv"
    assert c.shorten("a  b\nc", 10) == "a b c"
    assert c.shorten("x" * 50, 10) == "xxxxxxx..."
