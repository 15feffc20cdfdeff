"""A PostgreSQL server of the tests' own: a fresh cluster in a temporary folder.

``initdb`` makes the cluster, ``pg_ctl`` starts it on 127.0.0.1 with a free
port and its unix socket in the same folder, trust authentication, and
fsync off (the data is thrown away).  PostgreSQL refuses to run as root, so
as root both run as the ``postgres`` user Debian's package creates (or
``nobody``) through ``runuser``.  Debian's server is found under
/usr/lib/postgresql/*/bin, elsewhere on PATH; as root, ``make test``
installs it when missing.

When anything of that is missing or fails, ``Unavailable`` says what.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "postgres"  # the role initdb creates
START_TIMEOUT = 30.0


class Unavailable(Exception):  # noqa: N818 - reads as a state: "PostgreSQL unavailable"
    """No server could be had here; the message says what was missing."""


@dataclass
class PgServer:
    root: Path  # the temporary folder: data/, sockets/, server.log
    port: int
    bindir: Path
    run_as: tuple[str, ...]  # ("runuser", "-u", USER, "--") as root, else ()
    host: str = "127.0.0.1"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sockets"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(statement.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def pg_ctl(self, *args: str, timeout: float = START_TIMEOUT + 10) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and remove the folder."""
        try:
            self.pg_ctl("stop", "-m", "immediate", "-w", "-t", "20")
        except (subprocess.SubprocessError, OSError):
            self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def down(self) -> None:
        """Stop the server, its data kept (a downstream that goes down)."""
        self.pg_ctl("stop", "-m", "fast", "-w", "-t", "20")

    def up(self) -> None:
        """Start it again after down() and wait until it accepts connections."""
        self.pg_ctl("start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(self.log_path))
        _wait_accepting(self, time.monotonic() + START_TIMEOUT)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 9)


def find_bindir() -> Path:
    """The folder with initdb and pg_ctl: Debian's newest, else the one on PATH."""
    found = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda d: [int(p) if p.isdigit() else 0 for p in d.parent.name.split(".")],
    )
    for bindir in reversed(found):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).resolve().parent
    raise Unavailable(
        "the PostgreSQL server programs initdb and pg_ctl were found neither under "
        "/usr/lib/postgresql/*/bin nor on PATH (as root, make test installs Debian's "
        "postgresql package; or apt-get install postgresql)"
    )


def _unprivileged() -> tuple[tuple[str, ...], int, int]:
    """(command prefix, uid, gid) to run the server with: as root, another user."""
    if os.geteuid() != 0:
        return (), os.getuid(), os.getgid()
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root and runuser (util-linux) was not found")
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return (runuser, "-u", name, "--"), entry.pw_uid, entry.pw_gid
    raise Unavailable("running as root and neither a postgres nor a nobody user exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_accepting(server: PgServer, deadline: float) -> None:
    """Poll until the server answers a query; Unavailable at the deadline."""
    import psycopg

    last = ""
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            last = str(exc).strip()
        time.sleep(0.05)
    raise Unavailable(
        f"the server did not accept connections within {START_TIMEOUT:.0f} s: {last}\n"
        f"{server.log_tail()}"
    )


def start_server() -> PgServer:
    """Make a cluster in a new temporary folder and start it; Unavailable if that fails."""
    try:
        import psycopg  # noqa: F401 - the tests talk to the server through it
    except ImportError:
        raise Unavailable("the Python package psycopg is not installed") from None
    bindir = find_bindir()
    run_as, uid, gid = _unprivileged()
    # Not under pytest's basetemp: that is private to this user, and the server's user
    # must reach its folder.
    root = Path(tempfile.mkdtemp(prefix="dropline-pg-"))
    os.chown(root, uid, gid)
    (root / "sockets").mkdir(mode=0o700)
    os.chown(root / "sockets", uid, gid)
    server = PgServer(root=root, port=_free_port(), bindir=bindir, run_as=run_as)
    try:
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(server.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# dropline's tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {server.port}\n"
                f"unix_socket_directories = '{server.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        server.pg_ctl("start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(server.log_path))
        _wait_accepting(server, time.monotonic() + START_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        command = shlex.join(str(a) for a in exc.cmd)
        output = (exc.stderr or b"").decode(errors="replace")[-2000:]
        tail = server.log_tail()
        server.stop()
        raise Unavailable(f"{command} exited {exc.returncode}:\n{output}\n{tail}") from None
    except (subprocess.TimeoutExpired, OSError, Unavailable) as exc:
        tail = server.log_tail()
        server.stop()
        raise Unavailable(f"PostgreSQL could not be started: {exc}\n{tail}") from None
    return server


__all__ = ["SUPERUSER", "PgServer", "Unavailable", "find_bindir", "start_server"]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL server of the tests' own for the session (skips where none can run).
    Tried three times: the free port it is given may be taken before it listens (by
    a test on the other worker)."""
    for tries_left in (2, 1, 0):
        try:
            server = start_server()
            break
        except Unavailable as exc:
            if not tries_left:
                pytest.skip(f"no PostgreSQL server for the postgres-load tests: {exc}")
    try:
        yield server
    finally:
        server.stop()
