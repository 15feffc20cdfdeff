"""The bare rename loop: incoming -> working -> archive, no fsync, no state.

What any drop-folder daemon costs at the very least in Python: one
``os.scandir`` of incoming/ and two renames per file (through directory
descriptors, as dropline does).  Nothing is durable: a crash may lose the
renames, and a file in working/ at a crash stays there.  When a scan finds
nothing it sleeps ``--poll`` seconds and scans again.

    python bare_loop.py DATA_DIR --count N [--poll SECONDS]
"""

from __future__ import annotations

import argparse
import os
import socket
import time


def notify_ready() -> None:
    """Send READY=1 to $NOTIFY_SOCKET, as a Type=notify service would."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


def main() -> None:
    """Move files until --count of them have reached archive/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--poll", type=float, default=0.0002)
    args = parser.parse_args()
    flags = os.O_RDONLY | os.O_DIRECTORY
    incoming = os.open(os.path.join(args.data_dir, "incoming"), flags)
    working = os.open(os.path.join(args.data_dir, "working"), flags)
    archive = os.open(os.path.join(args.data_dir, "archive"), flags)
    notify_ready()
    done = 0
    while done < args.count:
        moved = 0
        with os.scandir(incoming) as entries:
            for entry in entries:
                name = entry.name
                os.rename(name, name, src_dir_fd=incoming, dst_dir_fd=working)
                os.rename(name, name, src_dir_fd=working, dst_dir_fd=archive)
                moved += 1
        done += moved
        if not moved:
            time.sleep(args.poll)


if __name__ == "__main__":
    main()
