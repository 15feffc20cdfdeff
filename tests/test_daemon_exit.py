"""The daemon's process ends without the interpreter's teardown, doing what an exit must."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .harness import Tree


def test_exit_handlers_run_and_streams_are_flushed(tmp_path: Path) -> None:
    """The exit handlers run (the journal's last entries), buffered output is written,
    and the exit status is the one given."""
    marker = tmp_path / "handler-ran"
    script = textwrap.dedent(
        f"""
        import atexit, sys
        from dropline import cli
        atexit.register(lambda: open({str(marker)!r}, "w").write("yes"))
        sys.stdout.write("buffered, no newline")
        cli._exit_without_teardown(3)
        sys.stdout.write("never")
        """
    )
    # A pipe, not a terminal: the line stays in the buffer until it is flushed.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3
    assert done.stdout == "buffered, no newline"
    assert marker.read_text() == "yes"


def test_run_exits_zero_with_its_last_lines_written(tree: Tree) -> None:
    """`dropline run --exit-when-idle`: every file archived, exit 0, the last log
    line (daemon.stopped) written before the process ends."""
    tree.write_config('- name: all\n  match: "*"\n  stages: []\n', settle_time="0s")
    for i in range(20):
        (tree.incoming / f"f{i}.dat").write_bytes(b"x" * i)
    done = subprocess.run(
        [sys.executable, "-m", "dropline", "run", "--config", str(tree.config), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tree.archive.rglob("*") if p.is_file()) == sorted(
        f"f{i}.dat" for i in range(20)
    )
    assert '"event": "daemon.stopped"' in done.stderr.strip().splitlines()[-1]
