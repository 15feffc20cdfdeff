"""One daemon per data folder: a second daemon (or an offline retry) of another
state on the same data folder is refused, and never adopts the first's files."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from .harness import DaemonProcess, Tree, cli_json, run_cli, run_until_idle, wait_until

FILES = 12
BAD = """
- name: bad
  match: "*.bad"
  stages:
    - name: refuse
      command: ["sh", "-c", "exit 65"]
"""


def _gated(gate: Path) -> str:
    """A pipeline whose stage waits for GATE: every file stays in working/ until then."""
    return f"""
- name: gated
  match: "*.txt"
  stages:
    - name: wait-for-gate
      command: ["sh", "-c", "while [ ! -e '{gate}' ]; do sleep 0.05; done"]
      timeout: 60s
"""


class OtherTree(Tree):
    """The same data folder as the test's tree, with a state database of its own."""

    @property
    def state_db(self) -> Path:
        return self.root / "other-state" / "state.db"

    @property
    def config(self) -> Path:
        return self.root / "other.yaml"


def _other(tree: Tree, pipelines: str) -> OtherTree:
    other = OtherTree(tree.root)
    other.state_db.parent.mkdir(exist_ok=True)
    other.write_config(pipelines)
    return other


def _start(other: OtherTree, daemons: list[DaemonProcess]) -> DaemonProcess:
    proc = DaemonProcess(other, log_name="other.log")
    daemons.append(proc)
    return proc


def _fill_working(tree: Tree, start_daemon: Any, gate: Path) -> DaemonProcess:
    tree.write_config(_gated(gate))
    first: DaemonProcess = start_daemon()
    first.wait_event("daemon.ready")
    for i in range(FILES):
        (tree.incoming / f"f{i}.txt").write_bytes(b"payload %d\n" % i)
    wait_until(
        lambda: len(list(tree.working.iterdir())) == FILES and not list(tree.incoming.iterdir()),
        what="every file claimed into working/",
    )
    return first


def test_second_daemon_on_the_same_data_folder_is_refused(
    tree: Tree, start_daemon: Any, daemons: list[DaemonProcess]
) -> None:
    """Refused at start, twice (a restart), exit 1, naming the first's pid; the first's
    files in working/ are archived once, by the first, and the second records nothing."""
    gate = tree.root / "gate"
    first = _fill_working(tree, start_daemon, gate)
    other = _other(tree, _gated(gate))
    for _ in range(2):  # started, then started again: as a restarted unit would be
        second = _start(other, daemons)
        assert second.wait(timeout=20) == 1, second.text()
        text = second.text()
        assert f"another dropline is running on the data folder {tree.data}" in text, text
        assert f"pid {first.proc.pid}" in text, text
        assert "one daemon per data folder" in text, text
    assert first.proc.poll() is None
    assert len(list(tree.working.iterdir())) == FILES
    gate.touch()
    wait_until(lambda: len(tree.archived()) == FILES, timeout=30, what="all archived")
    (tree.incoming / "late.txt").write_bytes(b"late\n")  # the first still takes new files
    wait_until(lambda: "late.txt" in tree.archived(), timeout=30, what="late.txt archived")
    assert first.stop() == 0
    assert not other.state_db.exists()  # refused before it opened its database
    assert tree.query("SELECT state, count(*) FROM items GROUP BY state") == [
        ("archived", FILES + 1)
    ]
    assert len(first.find("file.archived")) == FILES + 1
    assert not list(tree.working.iterdir())


def test_killed_daemon_frees_the_data_folder(
    tree: Tree, start_daemon: Any, daemons: list[DaemonProcess]
) -> None:
    """The lock dies with its daemon (and its mover): after a kill -9 of the first,
    a daemon of another state starts on the folder and finishes what was left."""
    gate = tree.root / "gate"
    first = _fill_working(tree, start_daemon, gate)
    other = _other(tree, _gated(gate))
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    gate.touch()  # the killed daemon's stages end too (they are not its to finish)
    second = _start(other, daemons)
    second.wait_event("daemon.ready", timeout=20)
    wait_until(lambda: len(tree.archived()) == FILES, timeout=30, what="all archived")
    assert second.stop() == 0
    assert other.query("SELECT state, count(*) FROM items GROUP BY state") == [("archived", FILES)]
    assert tree.query("SELECT count(*) FROM items WHERE state = 'archived'") == [(0,)]


def test_offline_retry_refused_while_another_state_runs_on_the_folder(
    tree: Tree, start_daemon: Any, daemons: list[DaemonProcess]
) -> None:
    """`dropline retry` with no daemon of its own state moves files into working/ itself:
    not while a daemon of another state owns that working/."""
    tree.write_config(BAD)
    other = _other(tree, BAD)
    (tree.incoming / "data.bad").write_bytes(b"bad")
    assert run_until_idle(other) == 0  # the other state fails it
    assert (tree.failed / "data.bad").exists()
    first = start_daemon()
    first.wait_event("daemon.ready")
    result = run_cli("retry", "--all-failed", "--config", str(other.config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"another dropline is running on the data folder {tree.data}" in result.stderr
    assert f"pid {first.proc.pid}" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tree.failed / "data.bad").exists()
    assert not list(tree.working.iterdir())
    assert first.stop() == 0
    # With the folder free again the same retry applies offline.
    result = run_cli("retry", "--all-failed", "--config", str(other.config), "--json")
    assert result.returncode == 0, result.stderr
    assert not (tree.failed / "data.bad").exists()
    assert len(list(tree.working.iterdir())) == 1


def test_state_database_inside_the_data_folder_is_one_lock(tree: Tree) -> None:
    """state_db in data_dir itself: both locks are one directory, taken once."""
    tree.write_config('- name: txt\n  match: "*.txt"\n')
    text = tree.config.read_text().replace(str(tree.state_db), str(tree.data / "state.db"))
    tree.config.write_text(text)
    (tree.incoming / "a.txt").write_bytes(b"a")
    assert run_until_idle(tree) == 0
    assert "a.txt" in tree.archived()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_mover_holds_the_data_folder_lock_too(tree: Tree, start_daemon: Any) -> None:
    """The mover, which still moves files after its daemon is gone until the kernel
    kills it, keeps the lock's descriptor: no daemon recovers under it."""
    tree.write_config('- name: txt\n  match: "*.txt"\n')
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    data = os.stat(tree.data)

    def holds_data(pid: int) -> bool:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (data.st_dev, data.st_ino):
                return True
        return False

    movers = [
        p
        for p in _children(daemon.proc.pid)
        if b"dropline.spool.mover" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(movers) == 1
    assert holds_data(movers[0])
    assert daemon.stop() == 0


def test_status_names_the_daemon_of_another_state_on_the_folder(
    tree: Tree, start_daemon: Any
) -> None:
    """`status` of the state that does not run says who holds its data folder."""
    tree.write_config('- name: txt\n  match: "*.txt"\n')
    other = _other(tree, '- name: txt\n  match: "*.txt"\n')
    assert run_until_idle(other) == 0  # its state database exists, as after a first run
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    doc = cli_json(other, "status", schema="status")
    assert doc["daemon"] == {
        "running": False,
        "pid": None,
        "data_folder_pid": daemon.proc.pid,
    }
    human = run_cli("status", "--config", str(other.config))
    assert human.returncode == 0, human.stderr
    assert f"not running (another dropline, pid {daemon.proc.pid}, runs on its data" in (
        human.stdout
    )
    assert daemon.stop() == 0
