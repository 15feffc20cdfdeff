"""The command script: ``/bin/true PATH`` on each file, one after the other.

What an operator writes instead of a pipeline with one command stage: one
process, no state, no retries.  For each file in incoming/ it runs the
command (``subprocess.run``) and ``shutil.move``s the file to archive/ when
it exits 0, to failed/ otherwise.  It stops once --count files have ended.

    python command_script.py DATA_DIR --count N [--command /bin/true]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
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
    """Run the command on files until --count of them are in archive/ or failed/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--command", default="/bin/true")
    parser.add_argument("--poll", type=float, default=0.0002)
    args = parser.parse_args()
    incoming = os.path.join(args.data_dir, "incoming")
    archive = os.path.join(args.data_dir, "archive")
    failed = os.path.join(args.data_dir, "failed")
    notify_ready()
    done = 0
    while done < args.count:
        names = sorted(os.listdir(incoming))
        for name in names:
            path = os.path.join(incoming, name)
            status = subprocess.run([args.command, path], check=False).returncode
            shutil.move(path, os.path.join(archive if status == 0 else failed, name))
        done += len(names)
        if not names:
            time.sleep(args.poll)


if __name__ == "__main__":
    main()
