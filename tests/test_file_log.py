"""The events of every file, logged without structlog's wrapper, are the lines structlog writes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from dropline import log as dlog

NAME = b"bad\nname\xff\x1b[31m.csv"  # a newline, a byte that is not UTF-8, an ANSI escape
FIELDS = {"item": "01ABC", "file": NAME, "pipeline": "reports", "size": 1024}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging configured to write into a string, set back to stderr afterwards."""
    out = io.StringIO()
    yield out
    dlog.configure("json")


def _without_time(line: str, log_format: str) -> str:
    if log_format == "json":
        doc = json.loads(line)
        doc.pop("timestamp")
        return json.dumps(doc)
    return line.split(" ", 1)[1]  # the console line starts with its time


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_same_line_as_structlog_writes(stream: io.StringIO, log_format: str) -> None:
    """Field for field and in the same order, escaped the same way, at both levels."""
    dlog.configure(log_format, stream=stream)
    log = dlog.get_logger()
    file_log = dlog.FileLog(log)
    log.info("file.claimed", **FIELDS)
    file_log.info("file.claimed", **FIELDS)
    log.error("file.failed", **FIELDS, reason="bad")
    file_log.error("file.failed", **FIELDS, reason="bad")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert _without_time(lines[1], log_format) == _without_time(lines[0], log_format)
    assert _without_time(lines[3], log_format) == _without_time(lines[2], log_format)
    assert "\n" not in lines[1] and "\x1b" not in lines[1] and "\\xff" in lines[1]
    if log_format == "json":
        assert list(json.loads(lines[1])) == list(json.loads(lines[0]))


def test_captured_while_a_test_captures_events(stream: io.StringIO) -> None:
    """Under structlog's capture_logs the events go where structlog sends them."""
    dlog.configure("json", stream=stream)
    file_log = dlog.FileLog(dlog.get_logger())
    with structlog.testing.capture_logs() as events:
        file_log.info("file.archived", item="01ABC", file=b"a.csv", to="archive/a.csv")
    assert [e["event"] for e in events] == ["file.archived"]
    assert stream.getvalue() == ""
    file_log.info("file.archived", item="01ABC", file=b"a.csv", to="archive/a.csv")
    assert json.loads(stream.getvalue())["event"] == "file.archived"


def test_a_logger_with_context_logs_its_context(stream: io.StringIO) -> None:
    """Context bound to the logger is in the line, as structlog writes it."""
    dlog.configure("json", stream=stream)
    file_log = dlog.FileLog(dlog.get_logger(daemon="test"))
    file_log.info("file.claimed", **FIELDS)
    assert json.loads(stream.getvalue())["daemon"] == "test"


def test_configured_again_it_logs_as_its_logger_does(stream: io.StringIO) -> None:
    """Logging configured again after the FileLog was made: it writes where its
    logger writes, never with processors of a configuration no longer in force."""
    first = io.StringIO()
    dlog.configure("json", stream=first)
    log = dlog.get_logger()
    file_log = dlog.FileLog(log)
    dlog.configure("console", stream=stream)
    log.info("file.claimed", **FIELDS)
    file_log.info("file.claimed", **FIELDS)
    lines = first.getvalue().splitlines() + stream.getvalue().splitlines()
    assert len(lines) == 2
    assert _without_time(lines[1], "json") == _without_time(lines[0], "json")
