"""The lease probe's own cost per file: ``python -m tests.bench.probe [--dir DIR]``.

Times, on files of 1 KiB in a folder of DIR (default: the temporary folder),
what the claim does per file with and without the probe: the lstat the loop
does anyway, the probe before the claim (open, fstat, lease taken, looked at
and released, close) and the probe while hashing (the lease on the descriptor
already open, and an fstat).  Prints microseconds per file, the median of
five runs; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dropline.lease import LeaseProbe
from dropline.spool import Entry, Spool


def _per_file(action: Callable[[], None], count: int, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data = Path(tmp)
        for sub in ("incoming", "working", "archive", "failed"):
            (data / sub).mkdir()
        names = [f"f{n:06d}.csv".encode() for n in range(args.files)]
        for name in names:
            (data / "incoming" / os.fsdecode(name)).write_bytes(b"x" * 1024)
        spool = Spool(data, max_file_size=1 << 30)
        probe = LeaseProbe()
        entries = [spool.incoming.inspect(name) for name in names]
        assert all(isinstance(e, Entry) for e in entries)
        fds = [os.open(name, os.O_RDONLY, dir_fd=spool.dirs.incoming) for name in names]
        try:

            def lstat() -> None:
                for name in names:
                    spool.incoming.inspect(name)

            def before_claim() -> None:
                spool.settings.leases = probe
                for entry in entries:
                    assert isinstance(entry, Entry)
                    spool.incoming.held_open(entry)

            def while_hashing() -> None:
                for fd in fds:
                    probe.held_open(fd)
                    os.fstat(fd)

            count = len(names)
            rows = [
                ("lstat of a name in incoming/ (done anyway)", _per_file(lstat, count)),
                ("probe before the claim (open ... close)", _per_file(before_claim, count)),
                ("probe while hashing (lease and fstat)", _per_file(while_hashing, count)),
            ]
        finally:
            for fd in fds:
                os.close(fd)
            spool.close()
    for what, micros in rows:
        print(f"{what:<48} {micros:7.2f} us per file")
    print(f"{'the probe in all, per file':<48} {rows[1][1] + rows[2][1]:7.2f} us")


if __name__ == "__main__":
    main()
