"""journald's native protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from dropline import log as dlog
from dropline.journal import JournalSender, field_name, stderr_is_journal
from dropline.messages import NAMESPACE, message_id

from .harness import REPO


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


@pytest.fixture(autouse=True)
def _senders_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every sender a test makes is closed at its end: its socket is the test's to close."""
    made: list[JournalSender] = []
    init = JournalSender.__init__

    def tracked(self: JournalSender, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(JournalSender, "__init__", tracked)
    yield
    for sender in made:
        sender.close(timeout=0.0)


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
    assert fields["MESSAGE_ID"] == message_id("file.failed")
    assert "TIMESTAMP" not in fields


def test_lists_and_flags_are_json_in_the_journal_and_on_the_console(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """A list, a mapping or a flag reads as JSON (["a", "b"], true), never as Python
    writes it (['a', 'b'], True): in a journal field and on a console line."""
    path, sock = journal_socket
    JournalSender(path).send(
        "configuration reloaded",
        "info",
        {"pipelines": ["reports", "caf\u00e9"], "running": True, "limits": {"a": 1}},
    )
    fields = _parse(sock.recv(65536))
    assert fields["PIPELINES"] == '["reports", "caf\u00e9"]'
    assert fields["RUNNING"] == "true"
    assert fields["LIMITS"] == '{"a": 1}'
    out = io.StringIO()
    dlog.configure("console", stream=out)
    try:
        dlog.get_logger().info("daemon.reloaded", pipelines=["reports", "orders"], dry=False)
        dlog.release_lines()
    finally:
        dlog.configure("json", stream=io.StringIO())
    line = out.getvalue()
    assert '["reports","orders"]' in line and "dry=false" in line, line
    assert "['reports'" not in line


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


# --- MESSAGE and MESSAGE_ID ---------------------------------------------------


def _render(sender: JournalSender, method: str, event: str, **fields: object) -> None:
    with pytest.raises(structlog.DropEvent):
        dlog._JournalRenderer(sender)(None, method, {"event": event, "level": method, **fields})


def test_message_is_a_sentence_and_the_fields_stay(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """MESSAGE reads as a sentence, not a dump of the fields; the fields are still fields."""
    path, sock = journal_socket
    sender = JournalSender(path)
    _render(
        sender,
        "info",
        "file.archived",
        item="01ABC",
        file="orders-7.csv",
        pipeline="reports",
        to="2026-11-28/orders-7.csv",
    )
    fields = _parse(sock.recv(65536))
    assert fields["MESSAGE"] == (
        "archived orders-7.csv to archive/2026-11-28/orders-7.csv (pipeline reports)"
    )
    assert (fields["FILE"], fields["TO"], fields["PIPELINE"]) == (
        "orders-7.csv",
        "2026-11-28/orders-7.csv",
        "reports",
    )
    _render(sender, "error", "config.rejected", error="x.yaml:3: bad", kept="the previous one")
    assert _parse(sock.recv(65536))["MESSAGE"] == (
        "configuration rejected, the previous one kept: x.yaml:3: bad"
    )
    # An event with no sentence of its own (a stage's): its name and its detail.
    _render(sender, "info", "load.rows", file="a.csv", rows=3, detail="3 rows")
    assert _parse(sock.recv(65536))["MESSAGE"] == "load.rows a.csv: 3 rows"


def test_message_id_is_stable_per_event() -> None:
    """32 lowercase hex digits, one per event name, the same in every release."""
    ids = {event: message_id(event) for event in ("file.archived", "file.failed", "x.y")}
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids.values())
    assert len(set(ids.values())) == len(ids)
    # Pinned: a change here breaks every operator's `journalctl MESSAGE_ID=` and catalog.
    assert ids["file.archived"] == uuid.uuid5(NAMESPACE, "file.archived").hex
    assert ids["file.archived"] == "8ea546e783aa556ea461bd34d9b1397f"


def test_readme_lists_the_message_ids() -> None:
    """The README's table of MESSAGE_IDs is what the code sends."""
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `([0-9a-f]{32})` \|", readme, re.M)
    assert len(rows) >= 10
    for event, value in rows:
        assert message_id(event) == value, event


# --- never blocking ---------------------------------------------------------


def _seq_event(sender: JournalSender, event: str, n: int, level: str = "info") -> None:
    sender.send(f"{event} {n}", level, {"EVENT": event, "seq": n})


def _seq_events(sender: JournalSender, event: str, seqs: range, level: str = "info") -> None:
    for n in seqs:
        _seq_event(sender, event, n, level)


def _drain(
    sock: socket.socket, sender: JournalSender, deadline: float = 30.0
) -> list[dict[str, str]]:
    """Read until the sender has nothing left and the socket is empty."""
    got: list[dict[str, str]] = []
    sock.setblocking(False)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            got.append(_parse(sock.recv(65536)))
            continue
        except BlockingIOError:
            pass
        if sender.flush() == 0:
            try:
                got.append(_parse(sock.recv(65536)))
            except BlockingIOError:
                return got
    raise AssertionError(f"still waiting after {deadline} s: {sender.waiting}")


def _in_thread(target: Callable[[], object], timeout: float = 20.0) -> None:
    """Run TARGET in a thread; fail if it has not returned by TIMEOUT (it blocked)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the sender blocked"


def test_a_reader_that_does_not_read_never_blocks_and_nothing_is_lost(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """With nobody reading, 5,000 entries are taken at once; once read, all arrive, in order."""
    path, sock = journal_socket
    sender = JournalSender(path)
    _in_thread(lambda: _seq_events(sender, "file.archived", range(5000)))
    assert sender.waiting > 0  # the socket's queue is full: the rest waits, in order
    got = _drain(sock, sender)
    assert [int(f["SEQ"]) for f in got] == list(range(5000))
    assert sender.dropped == 0
    assert all(f["MESSAGE_ID"] == message_id("file.archived") for f in got)


def test_full_queue_drops_progress_keeps_ends_and_says_so(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """Past its bound the queue drops progress entries, keeps ends and warnings, counts."""
    path, sock = journal_socket
    sender = JournalSender(path, queue_bytes=16 * 1024)

    def burst() -> None:
        for n in range(300):
            _seq_event(sender, "file.claimed", n)
            _seq_event(sender, "file.archived", n)
            if n % 10 == 0:
                _seq_event(sender, "stage.retrying", n, level="warning")

    _in_thread(burst)
    assert sender.dropped > 0 and sender.dropped_ends == 0
    got = _drain(sock, sender)
    by_event: dict[str, list[int]] = {}
    for f in got:
        by_event.setdefault(f["EVENT"], []).append(int(f.get("SEQ", -1)))
    assert by_event["file.archived"] == list(range(300))  # every end, in order
    assert by_event["stage.retrying"] == list(range(0, 300, 10))
    claimed = by_event["file.claimed"]
    assert claimed == sorted(claimed) and len(claimed) == 300 - sender.dropped
    report = got[-1]  # once caught up: how many were dropped
    assert report["EVENT"] == "journal.dropped"
    assert (report["DROPPED"], report["ENDS"], report["PRIORITY"]) == (
        str(sender.dropped),
        "0",
        "4",
    )
    assert report["MESSAGE"].startswith(f"{sender.dropped} journal entries were dropped")


def test_past_the_hard_bound_even_ends_are_dropped_and_counted(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """Memory stays bounded: at four times the bound, ends are dropped too, and counted."""
    path, sock = journal_socket
    sender = JournalSender(path, queue_bytes=8 * 1024)
    _in_thread(lambda: _seq_events(sender, "file.failed", range(2000), "error"))
    assert sender.dropped_ends == sender.dropped > 0
    got = _drain(sock, sender)
    ends = [int(f["SEQ"]) for f in got if f["EVENT"] == "file.failed"]
    assert ends == sorted(ends) and len(ends) == 2000 - sender.dropped
    assert got[-1]["EVENT"] == "journal.dropped"
    assert got[-1]["ENDS"] == str(sender.dropped)


def test_behind_from_half_the_bound_until_an_eighth(
    journal_socket: tuple[str, socket.socket],
) -> None:
    """behind() turns on at half the bound and off only once the queue is small again."""
    path, sock = journal_socket
    sender = JournalSender(path, queue_bytes=64 * 1024)
    n = 0
    while not sender.behind():
        _seq_event(sender, "file.archived", n)
        n += 1
        assert n < 10_000
    sock.setblocking(False)
    seen = 0
    while sender.behind():
        with contextlib.suppress(BlockingIOError):
            sock.recv(65536)
            seen += 1
        sender.flush()
    assert sender.waiting * 3 < n  # it let go only well below where it turned on
    assert seen > 0


def test_threads_keep_their_order(journal_socket: tuple[str, socket.socket]) -> None:
    """Entries of several threads arrive, each thread's in the order it logged them."""
    path, sock = journal_socket
    sender = JournalSender(path)

    def one(tag: str) -> Callable[[], None]:
        return lambda: _seq_events(sender, tag, range(1000))

    threads = [threading.Thread(target=one(f"t.{i}")) for i in range(4)]
    for t in threads:
        t.start()
    got = _drain(sock, sender)
    for t in threads:
        t.join()
    got += _drain(sock, sender)
    for i in range(4):
        assert [int(f["SEQ"]) for f in got if f["EVENT"] == f"t.{i}"] == list(range(1000))
