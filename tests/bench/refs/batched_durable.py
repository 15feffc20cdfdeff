"""The batched durable loop: the naive durable loop, by batches of up to 256 files.

For each batch of names taken from a scan of incoming/:

1. rename each incoming -> working, then one fsync of working/;
2. one transaction INSERTing every file of the batch, COMMIT (WAL, ``synchronous=FULL``);
3. rename each working -> archive, then one fsync of archive/;
4. one transaction UPDATEing every file of the batch to archived, COMMIT.

The same guarantees as the naive loop at a fraction of its fsyncs: two
directory fsyncs and two commits per batch.  A batch is whatever the scan
has, up to ``--batch`` files: a lone file is not held back to fill it.
When a scan finds nothing it sleeps ``--poll`` seconds.

    python batched_durable.py DATA_DIR --count N [--batch 256] [--state PATH] [--poll SECONDS]
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


def move_batch(
    names: list[bytes], db: sqlite3.Connection, incoming: int, working: int, archive: int
) -> None:
    """Claim NAMES into working/ and then archive them, two fsyncs and two commits in all."""
    for name in names:
        os.rename(name, name, src_dir_fd=incoming, dst_dir_fd=working)
    os.fsync(working)
    now = time.time()
    db.execute("BEGIN")
    first = None
    for name in names:
        row = db.execute(
            "INSERT INTO items (name, state, claimed_at) VALUES (?, 'working', ?)", (name, now)
        ).lastrowid
        first = row if first is None else first
    db.execute("COMMIT")
    for name in names:
        os.rename(name, name, src_dir_fd=working, dst_dir_fd=archive)
    os.fsync(archive)
    db.execute("BEGIN")
    db.execute(
        "UPDATE items SET state = 'archived', finished_at = ? WHERE id BETWEEN ? AND ?",
        (time.time(), first, (first or 0) + len(names) - 1),
    )
    db.execute("COMMIT")


def main() -> None:
    """Move files durably, batch by batch, until --count of them have reached archive/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--state", default="")
    parser.add_argument("--poll", type=float, default=0.0002)
    args = parser.parse_args()
    flags = os.O_RDONLY | os.O_DIRECTORY
    incoming = os.open(os.path.join(args.data_dir, "incoming"), flags)
    working = os.open(os.path.join(args.data_dir, "working"), flags)
    archive = os.open(os.path.join(args.data_dir, "archive"), flags)
    db = open_state(args.state or os.path.join(args.data_dir, "batched-state.db"))
    notify_ready()
    done = 0
    while done < args.count:
        moved = 0
        with os.scandir(incoming) as entries:
            batch: list[bytes] = []
            for entry in entries:
                batch.append(os.fsencode(entry.name))
                if len(batch) >= args.batch:
                    move_batch(batch, db, incoming, working, archive)
                    moved += len(batch)
                    batch = []
            if batch:
                move_batch(batch, db, incoming, working, archive)
                moved += len(batch)
        done += moved
        if not moved:
            time.sleep(args.poll)
    db.close()


if __name__ == "__main__":
    main()
