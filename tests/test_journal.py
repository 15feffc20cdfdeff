"""journald's native protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import io
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from dropline import log as dlog
from dropline.journal import JournalSender, field_name, stderr_is_journal


def _parse(datagram: bytes) -> dict[str, str]:
    """Decode the native protocol: KEY=value lines, or KEY\\n + length + binary value."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            rest = after[8 + size + 1 :]
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_event_fields_become_journal_fields(journal_socket: tuple[str, socket.socket]) -> None:
    """Each event's fields arrive as upper-case journal fields with MESSAGE and PRIORITY."""
    path, sock = journal_socket
    sender = JournalSender(path)
    renderer = dlog._JournalRenderer(sender)
    with pytest.raises(structlog.DropEvent):
        renderer(
            None,
            "error",
            {
                "event": "file.failed",
                "level": "error",
                "item": "01ABC",
                "file": "bad\\nname.csv",
                "pipeline": "reports",
                "stage": "validate",
                "attempt": 3,
                "timestamp": "x",
            },
        )
    fields = _parse(sock.recv(65536))
    assert fields["EVENT"] == "file.failed"
    assert fields["ITEM"] == "01ABC"
    assert fields["FILE"] == "bad\\nname.csv"
    assert fields["PIPELINE"] == "reports"
    assert fields["STAGE"] == "validate"
    assert fields["ATTEMPT"] == "3"
    assert fields["PRIORITY"] == "3"
    assert fields["SYSLOG_IDENTIFIER"] == "dropline"
    assert "file.failed" in fields["MESSAGE"] and "item=01ABC" in fields["MESSAGE"]
    assert "TIMESTAMP" not in fields


def test_multiline_value_uses_length_framing(journal_socket: tuple[str, socket.socket]) -> None:
    """A value holding a newline is sent length-prefixed, so it cannot forge a field."""
    path, sock = journal_socket
    JournalSender(path).send("m", "info", {"error": "line one\nPRIORITY=0"})
    fields = _parse(sock.recv(65536))
    assert fields["ERROR"] == "line one\nPRIORITY=0"
    assert fields["PRIORITY"] == "6"


def test_field_names_are_valid_journal_keys() -> None:
    """Keys are upper-cased to [A-Z0-9_] and never start with an underscore or digit."""
    assert field_name("item") == "ITEM"
    assert field_name("_secret") == "SECRET"
    assert field_name("9lives") == "F_9LIVES"
    assert field_name("a-b.c") == "A_B_C"


def test_unreachable_journal_falls_back_to_the_stream(tmp_path: Path) -> None:
    """When the socket refuses the entry, the human line goes to the fallback stream."""
    out = io.StringIO()
    JournalSender(str(tmp_path / "absent.sock"), fallback=out).send("hello", "info", {})
    assert out.getvalue() == "hello\n"


def test_journal_stream_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$JOURNAL_STREAM names stderr's device and inode; only a match means the journal."""
    with (tmp_path / "stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal(stream)
