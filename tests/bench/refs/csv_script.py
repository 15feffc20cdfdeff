"""The CSV script: what an operator writes instead of dropline's CSV pipeline.

One process, no state, no retries.  For each file in incoming/ (sorted), in
the process itself: read it as CSV, check the five typed columns of the
orders (order_id integer, customer text, amount decimal, date ISO date, qty
integer; none empty), drop rows whose order_id was already seen in the file,
insert the rest into a SQLite table with one commit per file, and
``shutil.move`` the file to archive/; a file that does not check goes to
failed/ and loads nothing.  It stops once --count files have ended.

    python csv_script.py DATA_DIR --count N --database PATH [--table orders]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import os
import re
import shutil
import socket
import sqlite3
import time

INTEGER = re.compile(r"[+-]?\d+")
DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
COLUMNS = ("order_id", "customer", "amount", "date", "qty")
SQL_TYPES = ("INTEGER", "TEXT", "NUMERIC", "TEXT", "INTEGER")


def notify_ready() -> None:
    """Send READY=1 to $NOTIFY_SOCKET, as a Type=notify service would."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


class BadFileError(Exception):
    """The file is not what the table expects."""


def check(value: str, kind: str) -> None:
    """Raise BadFileError unless VALUE is a non-empty value of KIND."""
    if value == "":
        raise BadFileError("empty value")
    if kind == "INTEGER" and not INTEGER.fullmatch(value):
        raise BadFileError(f"{value!r} is not an integer")
    if kind == "NUMERIC" and not DECIMAL.fullmatch(value):
        raise BadFileError(f"{value!r} is not a decimal")


def read_orders(path: str) -> list[tuple[object, ...]]:
    """The file's rows, checked, deduplicated on order_id, converted for the table."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[: len(COLUMNS)] != list(COLUMNS) or len(header) != len(COLUMNS):
            raise BadFileError(f"header {header}")
        seen: set[str] = set()
        out: list[tuple[object, ...]] = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(COLUMNS):
                raise BadFileError(f"{len(record)} fields")
            for value, kind in zip(record, SQL_TYPES, strict=True):
                check(value, kind)
            try:
                dt.datetime.strptime(record[3], "%Y-%m-%d")
            except ValueError:
                raise BadFileError(f"{record[3]!r} is not a date") from None
            values = [v.strip() for v in record]
            if values[0] in seen:
                continue
            seen.add(values[0])
            amount = str(decimal.Decimal(values[2]))
            out.append((int(values[0]), values[1], amount, values[3], int(values[4])))
        return out


def main() -> None:
    """Load files until --count of them are in archive/ or failed/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--table", default="orders")
    parser.add_argument("--poll", type=float, default=0.0002)
    args = parser.parse_args()
    incoming = os.path.join(args.data_dir, "incoming")
    archive = os.path.join(args.data_dir, "archive")
    failed = os.path.join(args.data_dir, "failed")
    db = sqlite3.connect(args.database)
    columns = ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, SQL_TYPES, strict=True))
    db.execute(f"CREATE TABLE IF NOT EXISTS {args.table} ({columns})")
    db.commit()
    insert = f"INSERT INTO {args.table} VALUES (?, ?, ?, ?, ?)"
    notify_ready()
    done = 0
    while done < args.count:
        names = sorted(os.listdir(incoming))
        for name in names:
            path = os.path.join(incoming, name)
            try:
                rows = read_orders(path)
            except (BadFileError, csv.Error, UnicodeDecodeError, ValueError):
                shutil.move(path, os.path.join(failed, name))
                continue
            db.executemany(insert, rows)
            db.commit()
            shutil.move(path, os.path.join(archive, name))
        done += len(names)
        if not names:
            time.sleep(args.poll)
    db.close()


if __name__ == "__main__":
    main()
