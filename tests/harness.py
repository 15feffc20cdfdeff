"""Test helpers: a real data tree in tmp_path, a real daemon subprocess, waiting with deadlines.

No mocks: the daemon under test is ``python -m dropline run`` with real inotify,
a real SQLite file and real subprocess stages.  Waiting is always on a
condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll PREDICATE until it returns something truthy; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Tree:
    """A data directory, a state directory and a configuration file in tmp_path."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def incoming(self) -> Path:
        return self.data / "incoming"

    @property
    def working(self) -> Path:
        return self.data / "working"

    @property
    def archive(self) -> Path:
        return self.data / "archive"

    @property
    def failed(self) -> Path:
        return self.data / "failed"

    @property
    def state_db(self) -> Path:
        return self.root / "state" / "state.db"

    @property
    def config(self) -> Path:
        return self.root / "dropline.yaml"

    def write_config(self, pipelines: str, **settings: Any) -> Path:
        """Write dropline.yaml with PIPELINES (YAML text of the list) and SETTINGS."""
        lines = [f"data_dir: {self.data}", f"state_db: {self.state_db}"]
        settings.setdefault("settle_time", "0.2s")
        settings.setdefault("archive_layout", "flat")
        settings.setdefault("log_format", "json")
        for key, value in settings.items():
            lines.append(f"{key}: {json.dumps(value) if not isinstance(value, str) else value}")
        lines.append("pipelines:")
        lines.extend("  " + line for line in pipelines.strip("\n").splitlines())
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def archived(self) -> dict[str, Path]:
        """Files under archive/ (flat or one level of date folders), by file name."""
        found: dict[str, Path] = {}
        for path in self.archive.rglob("*"):
            if path.is_file():
                found.setdefault(path.name, path)
        return found

    def failed_files(self) -> dict[str, Path]:
        return {
            p.name: p
            for p in self.failed.iterdir()
            if p.is_file() and not p.name.endswith(".error.json")
        }

    def all_final(self) -> list[Path]:
        """Every file that ended: archive/ and failed/ (without the .error.json)."""
        files = [p for p in self.archive.rglob("*") if p.is_file()]
        files += [p for p in self.failed.iterdir() if not p.name.endswith(".error.json")]
        return files

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.state_db, timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()


def make_tree(root: Path) -> Tree:
    tree = Tree(root)
    for sub in ("incoming", "working", "archive", "failed"):
        (tree.data / sub).mkdir(parents=True, exist_ok=True)
    tree.state_db.parent.mkdir(parents=True, exist_ok=True)
    return tree


class DaemonProcess:
    """``python -m dropline run`` as a subprocess, its log (JSON lines) in a file."""

    def __init__(
        self,
        tree: Tree,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_name: str = "daemon.log",
    ) -> None:
        self.tree = tree
        self.log_path = tree.root / log_name
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("WATCHDOG_USEC", None)
        full_env.pop("DROPLINE_CRASH_AT", None)
        full_env["PYTHONPATH"] = str(REPO / "daemon")
        full_env.update(env or {})
        self._log_file = self.log_path.open("ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dropline", "run", "--config", str(tree.config), *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tree.root,
        )

    def events(self) -> list[dict[str, Any]]:
        """The JSON events this process has logged so far."""
        out = []
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "<raw>", "text": line.decode("utf-8", "replace")})
        return out

    def text(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        try:
            found = wait_until(
                lambda: self.find(event, **fields) or self._dead(),
                timeout,
                what=f"event {event} {fields}",
            )
        except AssertionError as exc:
            # What the daemon did meanwhile is what tells a slow machine from a stuck loop.
            raise AssertionError(
                f"{exc}; the daemon's log so far:\n{self.text()[-4000:]}"
            ) from None
        if found is True:
            raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.text()[-4000:]}")
        return found[0]  # type: ignore[no-any-return]

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def run_until_idle(tree: Tree, env: dict[str, str] | None = None, timeout: float = 60.0) -> int:
    """Run the daemon with --exit-when-idle and return its exit status."""
    proc = DaemonProcess(tree, args=("--exit-when-idle",), env=env)
    try:
        return proc.wait(timeout)
    finally:
        proc.kill()


def crash_run(tree: Tree, point: str, timeout: float = 30.0) -> None:
    """Run the daemon with DROPLINE_CRASH_AT=POINT and check it really died there."""
    proc = DaemonProcess(tree, args=("--exit-when-idle",), env={"DROPLINE_CRASH_AT": point})
    try:
        code = proc.wait(timeout)
    finally:
        proc.kill()
    assert code == -signal.SIGKILL, f"crash point {point} was never reached:\n{proc.text()}"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dropline ARGS`` and capture its output (tables not fitted to
    a $COLUMNS of the caller's, unless ENV gives one)."""
    full_env = dict(os.environ)
    full_env.pop("COLUMNS", None)
    full_env["PYTHONPATH"] = str(REPO / "daemon")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dropline", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


# What fill_datagram_queue sends; a reader drops it when it reads again.
FILLER = b"X-FILLER=1"


def fill_datagram_queue(path: Path | str) -> list[socket.socket]:
    """Fill the receive queue of the AF_UNIX datagram socket bound at PATH, as the
    datagrams of other services fill systemd's while PID 1 is busy, whatever
    net.unix.max_dgram_qlen is.  The returned senders must stay open until the
    reader has read again (close them then).

    A sender's own buffer fills too, so each sender sends until EAGAIN, and a new
    one is tried; the queue is full when a fresh sender cannot send at all.
    """
    senders: list[socket.socket] = []
    while True:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        senders.append(sender)
        sent = 0
        while True:
            try:
                sender.sendto(FILLER, str(path))
            except BlockingIOError:
                break
            sent += 1
        if sent == 0:
            return senders
        if len(senders) > 1000:
            raise AssertionError(f"{path}: the datagram queue never filled")


def walk_entries(root: Path) -> list[Path]:
    """Every entry under ROOT, sorted, read while a daemon may be emptying it.

    ``Path.rglob`` raises when a sub-folder it listed is removed before it
    descends into it, which dropline does to an emptied sub-folder of
    incoming/; ``os.walk`` passes over a folder that vanished.
    """
    found: list[Path] = []
    for parent, dirs, files in os.walk(root):
        found.extend(Path(parent, name) for name in (*dirs, *files))
    return sorted(found)


def iter_files(root: Path) -> Iterator[Path]:
    for path in walk_entries(root):
        if path.is_file():
            yield path


SCHEMAS = Path(__file__).resolve().parent / "schemas"


def cli_json(tree: Tree, *args: str, schema: str, expect: int = 0) -> dict[str, Any]:
    """Run ``dropline ARGS --json`` on TREE's configuration; check its exit and its schema."""
    import jsonschema

    result = run_cli(*args, "--config", str(tree.config), "--json")
    assert result.returncode == expect, f"exit {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    spec = json.loads((SCHEMAS / f"{schema}.json").read_text())
    jsonschema.validate(doc, spec, format_checker=jsonschema.FormatChecker())
    return doc


class StatusListener:
    """A real AF_UNIX datagram socket as NOTIFY_SOCKET, read for STATUS= lines."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)

    def saw(self, *fragments: str) -> bool:
        """Read one datagram (or time out); True if it is a STATUS with every FRAGMENT."""
        try:
            message = self.sock.recv(4096).decode()
        except TimeoutError:
            return False
        return "STATUS=" in message and all(f in message for f in fragments)

    def close(self) -> None:
        self.sock.close()
