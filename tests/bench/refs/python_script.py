"""The Python script: a trivial function on each file, in the script's own process.

What an operator writes instead of a pipeline with one Python stage: one
process, no state, no retries.  For each file in incoming/ it calls
``stage(path)`` (which returns a small dict, as the stage does) and
``shutil.move``s the file to archive/, or to failed/ if the call raised.
It stops once --count files have ended.

    python python_script.py DATA_DIR --count N
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def stage(path: str) -> dict[str, object]:
    """The same trivial work as the benchmark's Python stage: a dict, nothing read."""
    return {"seen": os.path.basename(path)}


def main() -> None:
    """Call the function on files until --count of them are in archive/ or failed/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--count", type=int, required=True)
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
            try:
                stage(path)
            except Exception:  # a failing file goes to failed/, as in dropline
                shutil.move(path, os.path.join(failed, name))
                continue
            shutil.move(path, os.path.join(archive, name))
        done += len(names)
        if not names:
            time.sleep(args.poll)


if __name__ == "__main__":
    main()
