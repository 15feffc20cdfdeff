"""Names tools write beside a file (toolnames.py): the rules alone, then real tools
writing into incoming/ of a running daemon, their race windows held open.

The race windows: sed renames its temporary and vim removes its write test
microseconds after closing them, so a run of the real tool under strace with
that one system call delayed (``inject=...:delay_enter``) holds the window open
every time; sqlite3's next transaction recreates its journal while the daemon
is paused (DROPLINE_DELAY_AT) between the close event of the last one and its
look at the name.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dropline.config import ToolFilesConfig, load_config
from dropline.errors import ConfigError
from dropline.toolnames import Beside, ToolNames

from .harness import (
    DaemonProcess,
    Tree,
    cli_json,
    run_cli,
    run_until_idle,
    wait_until,
    walk_entries,
)

PASSTHROUGH = """
- name: passthrough
  match: "*"
  stages: []
"""
# A journal's header as SQLite writes it (magic, records, nonce, pages, sector size,
# page size): at the first change of a transaction, the magic still zero; hot, once
# the database may hold uncommitted pages.
BEGUN_JOURNAL = (
    bytes(8) + bytes.fromhex("00000000 bab24301 00000002 00000200 00001000") + bytes(100)
)
HOT_JOURNAL = bytes.fromhex("d9d505f920a163d7") + BEGUN_JOURNAL[8:]
DATABASE = b"SQLite format 3\0" + bytes(4080)
# A real tool with one system call delayed: the race window held open each run.
STRACE = ("strace", "-f", "-qq", "-o", "/dev/null", "-e")
# backupskip: its default skips /tmp, where the tests' folders are; with it, vim
# makes its 4913 write test before it renames the file to NAME~ and writes anew.
VIM_EDIT = ("-c", "set backupskip= backupcopy=auto", "-c", "normal Gosecond line", "-c", "wq")
WAL_HEADER = bytes.fromhex("377f0682") + b"\0\x2d\xe2\x18" + b"\0" * 24


# --- the rules alone ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, Beside]]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tmp_path, Beside(fd)
    finally:
        os.close(fd)


def rules(**kwargs: Any) -> ToolNames:
    return ToolNames(ToolFilesConfig(**kwargs))


def judge(folder: tuple[Path, Beside], name: str, age: float = 0.0) -> str | None:
    """The rule holding NAME (a file in the folder), or None if it may be claimed."""
    path, beside = folder
    size = (path / name).stat().st_size
    hold = rules().hold(os.fsencode(name), size, age, beside)
    return hold.rule if hold else None


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("sedKpt1vQ", "sed"),
        ("sed000000", "sed"),
        ("sediments", "sed"),  # shaped like one: a grace, then claimed
        ("sediment", None),
        ("sedKpt1vQ1", None),
        ("sed-pt1vQ", None),
        ("4913", "vim"),
        ("5036", "vim"),
        ("4913" + "0", None),
        ("4914", None),
        ("4790", None),
        ("~$report.docx", "office"),
        ("~$", None),
        ("report.docx", None),
        ("db-journal", "sqlite"),
        ("sales-journal", "sqlite"),
        ("db-wal", "sqlite"),
        ("db-shm", "sqlite"),
        ("-journal", None),
        ("db.journal", None),
        ("tmpk3_9xq2a", "python"),
        ("tmpK3_9xq2a", None),
        ("tmpfile.csv", None),
        ("orders.csv", None),
    ],
)
def test_shapes(name: str, shape: str | None) -> None:
    assert rules().shaped(os.fsencode(name)) == shape


def test_a_temporary_shape_waits_its_grace_then_is_claimed(
    folder: tuple[Path, Beside],
) -> None:
    path, _ = folder
    for name in ("sedKpt1vQ", "sediments", "~$report.docx", "tmpk3_9xq2a"):
        (path / name).write_text("x\n")
        assert judge(folder, name, age=0.5) is not None, name
        assert judge(folder, name, age=2.0) is None, name  # still there after the grace


def test_vims_write_test_is_held_only_empty(folder: tuple[Path, Beside]) -> None:
    path, _ = folder
    (path / "4913").write_bytes(b"")
    (path / "5036").write_text("a report numbered 5036\n")
    assert judge(folder, "4913", age=0.1) == "vim"
    assert judge(folder, "4913", age=2.5) is None
    assert judge(folder, "5036", age=0.0) is None


def test_sqlite_files_wait_while_their_database_is_beside(folder: tuple[Path, Beside]) -> None:
    path, _ = folder
    for suffix in ("-journal", "-wal", "-shm"):
        (path / f"db{suffix}").write_bytes(b"")
    (path / "sales-journal").write_text("2026-11-03 sold 3\n")
    # Without their base file beside them they are ordinary files, at once.
    for name in ("db-journal", "db-wal", "db-shm", "sales-journal"):
        assert judge(folder, name, age=0.0) is None, name
    (path / "db").write_bytes(b"")  # as sqlite3 creates it
    (path / "sales").write_text("a ledger\n")
    for name in ("db-journal", "db-wal", "db-shm"):
        assert judge(folder, name, age=3600.0) == "sqlite", name
    (path / "db").write_bytes(DATABASE)
    for name in ("db-journal", "db-wal", "db-shm"):
        assert judge(folder, name, age=3600.0) == "sqlite", name
    # Beside a file that is no database, no file of SQLite's.
    assert judge(folder, "sales-journal") is None


def test_a_database_waits_while_a_transaction_or_its_log_is_beside(
    folder: tuple[Path, Beside],
) -> None:
    path, _ = folder
    (path / "db").write_bytes(DATABASE)
    (path / "sales").write_text("a ledger\n")
    assert judge(folder, "db") is None
    journal = path / "db-journal"
    journal.write_bytes(HOT_JOURNAL)
    assert judge(folder, "db") == "sqlite"
    journal.write_bytes(BEGUN_JOURNAL)
    assert judge(folder, "db") == "sqlite"
    journal.write_bytes(b"2026-11-03 sold 3\n" * 4)  # a text journal of a database?
    assert judge(folder, "db") is None
    journal.write_bytes(b"\0" * 512)  # PERSIST mode after a commit: header zeroed
    assert judge(folder, "db") is None
    journal.write_bytes(b"")  # TRUNCATE mode after a commit
    assert judge(folder, "db") is None
    journal.unlink()
    wal = path / "db-wal"
    wal.write_bytes(b"")  # a connection open
    assert judge(folder, "db") == "sqlite"
    wal.write_bytes(WAL_HEADER)
    assert judge(folder, "db") == "sqlite"
    wal.write_text("not a log at all\n")
    assert judge(folder, "db") is None
    (path / "sales-wal").write_bytes(b"")
    (path / "sales-journal").write_bytes(HOT_JOURNAL)
    assert judge(folder, "sales") is None  # no database: nothing of SQLite's waits for it


def test_a_name_too_long_for_a_journal_beside_it(folder: tuple[Path, Beside]) -> None:
    path, _ = folder
    for name in ("a" * 255, "sed" + "a" * 252, "~$" + "b" * 253):
        (path / name).write_text("x\n")
        assert judge(folder, name, age=5.0) is None


def test_rules_can_be_turned_off(folder: tuple[Path, Beside]) -> None:
    path, beside = folder
    (path / "db").write_bytes(DATABASE)
    (path / "db-journal").write_bytes(HOT_JOURNAL)
    (path / "sedKpt1vQ").write_text("x\n")
    off = rules(rules=())
    assert off.hold(b"db-journal", 0, 0.0, beside) is None
    assert off.hold(b"db", len(DATABASE), 0.0, beside) is None
    assert rules().hold(b"db", len(DATABASE), 0.0, beside) is not None
    assert off.hold(b"sedKpt1vQ", 2, 0.0, beside) is None
    only_sed = rules(rules=("sed",))
    assert only_sed.hold(b"db-journal", 0, 0.0, beside) is None
    assert only_sed.hold(b"sedKpt1vQ", 2, 0.0, beside) is not None
    assert rules(grace=0.0).hold(b"sedKpt1vQ", 2, 0.0, beside) is None


def write_config(tmp_path: Path, tool_files: str) -> Path:
    path = tmp_path / "dropline.yaml"
    path.write_text(
        f"data_dir: {tmp_path}/data\nstate_db: {tmp_path}/state.db\n{tool_files}\n"
        "pipelines:\n  - name: all\n    match: '*'\n"
    )
    return path


def test_configuration_defaults_and_overrides(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "")).tool_files == ToolFilesConfig()
    assert ToolFilesConfig().rules == ("sqlite", "sed", "vim", "office", "python")
    config = load_config(
        write_config(tmp_path, "tool_files: {rules: [sqlite], grace: 5s, held_warning: 10m}")
    )
    assert config.tool_files == ToolFilesConfig(("sqlite",), 5.0, 600.0)
    assert load_config(write_config(tmp_path, "tool_files: {rules: []}")).tool_files.rules == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tool_files: {rules: [emacs]}", 'tool_files.rules[0]: expected one of "sqlite"'),
        ("tool_files: {rules: [sed, sed]}", '"sed" is listed twice'),
        ("tool_files: {grace: soon}", "tool_files.grace:"),
        ("tool_files: {held_warning: 0s}", "tool_files.held_warning: the duration must be"),
        ("tool_files: {graces: 2s}", 'unknown key "graces"; did you mean "grace"?'),
        ("tool_files: [sed]", "tool_files: expected a mapping"),
    ],
)
def test_configuration_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    assert message in str(caught.value), str(caught.value)
    assert ":3:" in str(caught.value)  # the line of tool_files


# --- real tools into a running daemon -------------------------------------------


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make test installs them as root)")


def names_in(folder: Path) -> set[str]:
    return {p.name for p in walk_entries(folder) if p.is_file()}


def settled(tree: Tree, expect: set[str]) -> bool:
    """Every name in EXPECT archived, nothing in working/ or failed/."""
    return (
        expect <= names_in(tree.archive)
        and not names_in(tree.working)
        and not names_in(tree.failed)
    )


@pytest.fixture
def daemon(tree: Tree, start_daemon: Any) -> Any:
    def start(env: dict[str, str] | None = None, **settings: Any) -> DaemonProcess:
        tree.write_config(PASSTHROUGH, **settings)
        proc: DaemonProcess = start_daemon(env=env)
        proc.wait_event("daemon.ready")
        return proc

    return start


def test_sqlite3_rollback_journal_recreated_inside_the_window(tree: Tree, daemon: Any) -> None:
    """Each commit closes and deletes the journal; the next statement makes a new one.
    The daemon, paused between the close event and its look, finds the new journal
    open: it waits while the database is beside it, and the database waits while its
    journal is there.  Everything committed is in the archived database."""
    need("sqlite3")
    proc = daemon(env={"DROPLINE_DELAY_AT": "intake.look:1.5"})
    db = tree.incoming / "ledger.db"
    journal = tree.incoming / "ledger.db-journal"
    shell = subprocess.Popen(
        ["sqlite3", "-bail", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None
    try:

        def say(sql: str) -> None:
            assert shell.stdin is not None
            shell.stdin.write(sql + "\n")
            shell.stdin.flush()

        say("PRAGMA journal_mode=DELETE; CREATE TABLE t(n INTEGER);")
        say("BEGIN; INSERT INTO t VALUES (1); COMMIT;")  # the journal's close: an event
        say("BEGIN; INSERT INTO t VALUES (2);")  # a new journal, open, within the pause
        wait_until(journal.exists, 5, what="the second transaction's journal")
        # Then the daemon looks (held, or, without the rule, claimed and archived).
        wait_until(
            lambda: (
                proc.find("file.held", file="ledger.db-journal")
                or proc.find("file.claimed", file="ledger.db-journal")
            ),
            15,
            what="the daemon's look at the journal",
        )
        for n in range(3, 30):
            say(f"INSERT INTO t VALUES ({n});")
        say("COMMIT;")
        for n in range(30, 60):
            say(f"BEGIN; INSERT INTO t VALUES ({n}); COMMIT;")
        _out, err = shell.communicate(".quit\n", timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    assert (shell.returncode, err) == (0, ""), err  # not "disk I/O error"
    wait_until(lambda: settled(tree, {"ledger.db"}), 30, what="ledger.db archived")
    assert names_in(tree.archive) == {"ledger.db"}
    assert proc.find("file.held", file="ledger.db-journal", rule="sqlite")
    assert not names_in(tree.incoming)
    archived = sqlite3.connect(tree.archive / "ledger.db")
    try:
        assert archived.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert archived.execute("SELECT count(*), sum(n) FROM t").fetchone() == (59, 59 * 60 // 2)
    finally:
        archived.close()


def test_sqlite3_in_wal_mode(tree: Tree, daemon: Any) -> None:
    """A session in WAL mode: its -wal and -shm wait beside the database, the
    database waits for them, and the archived database holds every commit."""
    need("sqlite3")
    proc = daemon(rescan_interval="0.5s")  # rescans find the files unchanged, settled
    db = tree.incoming / "events.db"
    shell = subprocess.Popen(
        ["sqlite3", "-bail", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None
    try:
        shell.stdin.write("PRAGMA journal_mode=WAL; CREATE TABLE e(n INTEGER);\n")
        for n in range(1, 41):
            shell.stdin.write(f"INSERT INTO e VALUES ({n});\n")
        shell.stdin.flush()
        wal = tree.incoming / "events.db-wal"
        wait_until(lambda: wal.exists() and wal.stat().st_size > 0, 10, what="a WAL")
        for name in ("events.db-wal", "events.db-shm"):
            proc.wait_event("file.held", file=name, rule="sqlite", timeout=10)
        # The database waits too: the session holds it open (the claim's lease
        # probe finds that first and puts it back), and its log is beside it.
        wait_until(
            lambda: (
                proc.find("file.held_open", file="events.db")
                or proc.find("file.held", file="events.db", rule="sqlite")
            ),
            10,
            what="events.db held",
        )
        assert not names_in(tree.archive)
        _out, err = shell.communicate(".quit\n", timeout=30)
    finally:
        if shell.poll() is None:
            shell.kill()
    assert shell.returncode == 0, err
    wait_until(lambda: settled(tree, {"events.db"}), 30, what="events.db archived")
    assert names_in(tree.archive) == {"events.db"}
    archived = sqlite3.connect(tree.archive / "events.db")
    try:
        assert archived.execute("SELECT count(*) FROM e").fetchone() == (40,)
    finally:
        archived.close()


def test_sed_i_temporary_left_alone_between_close_and_rename(tree: Tree, daemon: Any) -> None:
    """sed -i writes sedXXXXXX beside the file, closes it, renames it over the file.
    With the rename delayed by half a second, a claim on close would take the
    temporary and lose the edit; the grace leaves it to sed."""
    need("sed", "strace")
    proc = daemon()
    draft = tree.incoming / ".notes.txt"  # hidden: not claimed while it is edited
    draft.write_text("colour: red\n")
    delayed = "inject=rename,renameat,renameat2:delay_enter=500000"
    result = subprocess.run(
        [*STRACE, delayed, "sed", "-i", "s/red/blue/", str(draft)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    held = proc.find("file.held", rule="sed")
    assert held and held[0]["file"].startswith("sed"), proc.text()[-2000:]
    os.rename(draft, tree.incoming / "notes.txt")
    wait_until(lambda: settled(tree, {"notes.txt"}), 15, what="notes.txt archived")
    assert names_in(tree.archive) == {"notes.txt"}
    assert (tree.archive / "notes.txt").read_text() == "colour: blue\n"


def test_vims_write_test_left_alone_until_vim_removes_it(tree: Tree, daemon: Any) -> None:
    """vim creates an empty 4913 beside the file it writes, closes it and removes
    it; with the removal delayed, it is still not claimed."""
    need("strace")
    vim = shutil.which("vim.tiny") or shutil.which("vim")
    if vim is None:
        pytest.skip("not installed: vim-tiny (make test installs it as root)")
    proc = daemon()
    draft = tree.incoming / ".draft.txt"
    draft.write_text("first line\n")
    delayed = "inject=unlink,unlinkat:delay_enter=500000:when=1"
    result = subprocess.run(
        [
            *STRACE,
            delayed,
            vim,
            "-u",
            "NONE",
            "-i",
            "NONE",
            "-N",
            "-n",
            "-es",
            *VIM_EDIT,
            str(draft),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    os.rename(draft, tree.incoming / "draft.txt")
    wait_until(lambda: settled(tree, {"draft.txt"}), 15, what="draft.txt archived")
    assert names_in(tree.archive) == {"draft.txt"}  # no empty 4913 beside it
    assert (tree.archive / "draft.txt").read_text() == "first line\nsecond line\n"
    assert proc.find("file.held", file="4913", rule="vim"), proc.text()[-2000:]


def test_real_files_shaped_like_tools_are_claimed(tree: Tree, daemon: Any) -> None:
    """sediments (after the grace), sales-journal beside a text file named sales (once
    sales is claimed), 5036 with content (at once): nothing real is ignored."""
    proc = daemon()
    (tree.incoming / "sales").write_text("a ledger\n")
    (tree.incoming / "sales-journal").write_text("2026-11-03 sold 3\n")
    (tree.incoming / "sediments").write_text("clay, silt\n")
    (tree.incoming / "5036").write_text("report 5036\n")
    (tree.incoming / "~$report.docx").write_bytes(b"\x05alice" + b"\0" * 156)
    expect = {"sales", "sales-journal", "sediments", "5036", "~$report.docx"}
    wait_until(lambda: settled(tree, expect), 20, what="all archived")
    assert not names_in(tree.incoming)
    assert proc.find("file.held", file="sediments", rule="sed")
    assert not proc.find("file.held", file="5036")


def test_a_file_held_long_is_logged_once_shown_by_status_and_released(
    tree: Tree, daemon: Any
) -> None:
    """A database left with a hot journal beside it (its writer died mid-commit):
    both wait, are logged once when held past held_warning and shown by status;
    once the journal is dealt with, the database is claimed."""
    (tree.incoming / "crashed.db").write_bytes(DATABASE)
    (tree.incoming / "crashed.db-journal").write_bytes(HOT_JOURNAL)
    proc = daemon(tool_files={"held_warning": "1s"})
    for name in ("crashed.db", "crashed.db-journal"):
        event = proc.wait_event("file.held_long", file=name, timeout=10)
        assert event["rule"] == "sqlite" and event["level"] == "warning", event
    doc = cli_json(tree, "status", schema="status")
    held = {h["file"]: h for h in doc["held"]["shown"]}
    assert set(held) == {"crashed.db", "crashed.db-journal"}, doc["held"]
    assert "rollback journal" in held["crashed.db"]["reason"]
    assert doc["held"]["count"] == 2 and doc["counts"]["incoming"] == 2
    text = run_cli("status", "--config", str(tree.config))
    assert "kept waiting by a rule of tool_files" in text.stdout, text.stdout
    assert "crashed.db-journal" in text.stdout
    # Looked at again every second: still logged once each.
    count = len(proc.find("file.held", file="crashed.db"))
    wait_until(lambda: len(proc.find("file.held", file="crashed.db")) == count, 1)
    (tree.incoming / "crashed.db-journal").rename(tree.root / "crashed.db-journal")
    wait_until(lambda: settled(tree, {"crashed.db"}), 15, what="crashed.db archived")
    assert len(proc.find("file.held_long", file="crashed.db")) == 1
    assert not cli_json(tree, "status", schema="status")["held"]["count"]


def test_exit_when_idle_does_not_wait_on_a_held_database(tree: Tree) -> None:
    (tree.incoming / "crashed.db").write_bytes(DATABASE)
    (tree.incoming / "crashed.db-journal").write_bytes(HOT_JOURNAL)
    (tree.incoming / "plain.txt").write_text("x\n")
    tree.write_config(PASSTHROUGH)
    assert run_until_idle(tree, timeout=30) == 0
    assert names_in(tree.archive) == {"plain.txt"}
    assert names_in(tree.incoming) == {"crashed.db", "crashed.db-journal"}


def test_rules_off_claims_at_once(tree: Tree, daemon: Any) -> None:
    """tool_files: {rules: []}: such names are ordinary, claimed at their close."""
    proc = daemon(tool_files={"rules": []})
    (tree.incoming / "sedKpt1vQ").write_text("x\n")
    wait_until(lambda: settled(tree, {"sedKpt1vQ"}), 10, what="archived")
    assert not proc.find("file.held")


def test_a_database_with_a_hot_journal_goes_back_from_its_claim_then_waits(
    tree: Tree, daemon: Any
) -> None:
    """Nobody holds either file open (its writer died mid-commit), so only the rule
    keeps the database: the claim reads its first bytes, finds a database with a hot
    journal beside it and puts it back, unchanged; from then on it is asked about
    before any claim, and waits in incoming/ until the journal goes.

    Both are there before the start, as a writer that died leaves them: written
    one after the other to a running daemon, the journal alone (no database
    beside it, so nothing to wait for) could be claimed before the database came."""
    (tree.incoming / "crashed.db-journal").write_bytes(HOT_JOURNAL)
    (tree.incoming / "crashed.db").write_bytes(DATABASE)
    proc = daemon()
    event = proc.wait_event("file.held", file="crashed.db")
    assert event["rule"] == "sqlite" and "rollback journal" in event["reason"], event
    wait_until((tree.incoming / "crashed.db").exists, 5, what="crashed.db back in incoming/")
    inode = (tree.incoming / "crashed.db").stat().st_ino
    (tree.incoming / "plain.txt").write_text("x\n")
    wait_until(lambda: settled(tree, {"plain.txt"}), 10, what="plain.txt archived")
    assert (tree.incoming / "crashed.db").stat().st_ino == inode
    assert (tree.incoming / "crashed.db").read_bytes() == DATABASE
    assert not list(tree.working.iterdir())
    (tree.incoming / "crashed.db-journal").rename(tree.root / "crashed.db-journal")
    wait_until(lambda: settled(tree, {"crashed.db"}), 15, what="crashed.db archived")
    assert len(proc.find("file.held", file="crashed.db")) == 1


def test_database_waits_judges_by_the_first_bytes(folder: tuple[Path, Beside]) -> None:
    path, beside = folder
    (path / "db-journal").write_bytes(HOT_JOURNAL)
    names = rules()
    hold = names.database_waits(b"db", DATABASE[:16], beside)
    assert hold is not None and hold.rule == "sqlite"
    assert names.database_waits(b"db", b"", beside) is not None  # empty: just created
    assert names.database_waits(b"db", b"id,amount\n1,2\n", beside) is None
    assert names.database_waits(b"other", DATABASE[:16], beside) is None  # no journal
    # Before the claim an ordinary name costs no lstat; a database found so, two.
    (path / "db").write_bytes(DATABASE)
    assert names.hold(b"db", len(DATABASE), 0.0, beside, journals=False) is None
    assert names.hold(b"db", len(DATABASE), 0.0, beside, journals=True) is not None
