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


def test_wide_characters_count_two_columns_and_combining_marks_none() -> None:
    assert c.display_width("orders.csv") == 10
    assert c.display_width("日本語.csv") == 10
    assert c.display_width("cafe\u0301.csv") == 8  # e + combining acute
    out = io.StringIO()
    c.Console(out, colour=False).table(["FILE", "N"], [["日本語.csv", "1"], ["b.csv", "22"]])
    lines = out.getvalue().splitlines()
    # The second column starts at the same screen column on every line.
    starts = {c.display_width(line[: line.rindex(" ") + 1]) for line in lines}
    assert len(starts) == 1, lines


def test_a_table_fits_the_width_the_widest_text_column_giving_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    rows = [["01JD3PZ1K2M3N4P5Q6R7S8T9V0", "orders-3.csv", "7", "x" * 90]]
    c.Console(out, colour=False, width=60).table(["ITEM", "FILE", "N", "REASON"], rows, right=(2,))
    lines = out.getvalue().splitlines()
    assert all(c.display_width(line) <= 60 for line in lines), lines
    assert lines[1].endswith("...") and "orders-3.csv" in lines[1] and " 7 " in lines[1]
    assert c.clip("日本語のファイル名", 9) == "日本語..."
    narrow = io.StringIO()
    c.Console(narrow, colour=False, width=10).table(["FILE"], [["a-rather-long-name.csv"]])
    assert narrow.getvalue().splitlines()[1] == "  a-rat..."  # never under 8 columns
    wide = io.StringIO()
    c.Console(wide, colour=False).table(["REASON"], [["y" * 300]])  # not a terminal: whole
    assert wide.getvalue().splitlines()[1] == "  " + "y" * 300
    monkeypatch.setenv("COLUMNS", "40")  # as `watch` sets it for the command it runs
    assert c.Console(io.StringIO()).width == 40


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
