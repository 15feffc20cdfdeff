"""The naive durable loop: a directory fsync and a SQLite commit per step of each file.

The bare rename loop made crash-safe the obvious way.  For each file found
in incoming/:

1. rename incoming -> working, fsync working/;
2. INSERT the file into SQLite and COMMIT (WAL, ``synchronous=FULL``);
3. rename working -> archive, fsync archive/;
4. UPDATE its row to archived and COMMIT.

Two directory fsyncs and two durable commits per file, nothing shared
between files.  When a scan finds nothing it sleeps ``--poll`` seconds.

    python naive_durable.py DATA_DIR --count N [--state PATH] [--poll SECONDS]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    name BLOB NOT NULL,
    state TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL
)
"""


def notify_ready() -> None:
    """Send READY=1 to $NOTIFY_SOCKET, as a Type=notify service would."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


def open_state(path: str) -> sqlite3.Connection:
    """The state database: WAL, synchronous=FULL, autocommit (explicit BEGIN/COMMIT)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(SCHEMA)
    return db


def main() -> None:
    """Move files durably, one at a time, until --count of them have reached archive/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--state", default="")
    parser.add_argument("--poll", type=float, default=0.0002)
    args = parser.parse_args()
    flags = os.O_RDONLY | os.O_DIRECTORY
    incoming = os.open(os.path.join(args.data_dir, "incoming"), flags)
    working = os.open(os.path.join(args.data_dir, "working"), flags)
    archive = os.open(os.path.join(args.data_dir, "archive"), flags)
    db = open_state(args.state or os.path.join(args.data_dir, "naive-state.db"))
    notify_ready()
    done = 0
    while done < args.count:
        moved = 0
        with os.scandir(incoming) as entries:
            for entry in entries:
                name = os.fsencode(entry.name)
                os.rename(name, name, src_dir_fd=incoming, dst_dir_fd=working)
                os.fsync(working)
                db.execute("BEGIN")
                row = db.execute(
                    "INSERT INTO items (name, state, claimed_at) VALUES (?, 'working', ?)",
                    (name, time.time()),
                ).lastrowid
                db.execute("COMMIT")
                os.rename(name, name, src_dir_fd=working, dst_dir_fd=archive)
                os.fsync(archive)
                db.execute("BEGIN")
                db.execute(
                    "UPDATE items SET state = 'archived', finished_at = ? WHERE id = ?",
                    (time.time(), row),
                )
                db.execute("COMMIT")
                moved += 1
        done += moved
        if not moved:
            time.sleep(args.poll)
    db.close()


if __name__ == "__main__":
    main()
