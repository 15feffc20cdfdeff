"""The contestants: dropline and the reference loops, each started the same way.

Every subject works on a ``Tree`` (``data/incoming``, ``working``,
``archive``) and reports readiness: dropline and the Python loops by
``READY=1`` on a ``NOTIFY_SOCKET`` bound by the benchmark, the inotifywait
loop by the line inotifywait prints once its watch is in place.  The loops
stop by themselves once their ``--count`` files have arrived; dropline stops
with ``--exit-when-idle`` or on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..harness import REPO, Tree
from .measure import LineReady, NotifyReady, Subject

REFS = Path(__file__).resolve().parent / "refs"


@dataclass(frozen=True)
class Kind:
    """One column of the table."""

    key: str
    title: str


DROPLINE = Kind("dropline", "dropline")
BARE = Kind("bare", "bare")
NAIVE = Kind("naive", "naive")
BATCHED = Kind("batched", "batched")
INOTIFYWAIT = Kind("inotifywait", "inotifywait")
KINDS: tuple[Kind, ...] = (DROPLINE, BARE, NAIVE, BATCHED, INOTIFYWAIT)
REFERENCES: tuple[Kind, ...] = KINDS[1:]

_SCRIPTS = {
    BARE.key: "bare_loop.py",
    NAIVE.key: "naive_durable.py",
    BATCHED.key: "batched_durable.py",
}

# Everything but the paths and settle_time is dropline's default configuration.
PASSTHROUGH = """
- name: all
  match: "*"
  stages: []
"""


def inotifywait_path() -> str | None:
    """Where inotifywait is, if inotify-tools is installed."""
    return shutil.which("inotifywait")


def write_dropline_config(tree: Tree, *, settle_time: str | None, **settings: object) -> None:
    """dropline.yaml for TREE: the default settings but the paths, a flat archive, JSON logs.

    SETTLE_TIME None keeps the default (2 s): files written in place are
    claimed when inotify reports their close, whatever it is; a backlog
    found by the start-up scan is claimed once settled, so backlog runs use 0s.
    """
    if settle_time is not None:
        settings["settle_time"] = settle_time
    else:
        settings.setdefault("settle_time", "2s")
    settings.setdefault("archive_layout", "flat")
    settings.setdefault("log_format", "json")
    pipelines = str(settings.pop("pipelines", PASSTHROUGH))
    tree.write_config(pipelines, **settings)


def dropline_env(ready: NotifyReady) -> dict[str, str]:
    """The benchmark's environment for dropline, without anything a test might have set."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "DROPLINE_CRASH_AT"):
        env.pop(key, None)
    env.pop("DROPLINE_FAULT", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(ready.env)
    return env


def launch(
    kind: Kind,
    tree: Tree,
    *,
    count: int,
    exit_when_idle: bool = True,
    env: dict[str, str] | None = None,
) -> Subject:
    """Start KIND on TREE, to move COUNT files (dropline: until idle, or until SIGTERM).

    dropline's configuration must have been written (``write_dropline_config``);
    ENV is added to dropline's environment.
    """
    root = tree.root
    if kind is INOTIFYWAIT:
        return Subject(
            ["bash", str(REFS / "inotify_loop.sh"), str(tree.data), str(count)],
            env=dict(os.environ),
            cwd=root,
            ready=LineReady("Watches established"),
            stderr_to_ready=True,
        )
    ready = NotifyReady(root / "notify.sock")
    if kind is DROPLINE:
        args = ["--exit-when-idle"] if exit_when_idle else []
        argv = [sys.executable, "-m", "dropline", "run", "--config", str(tree.config), *args]
        return Subject(
            argv,
            env={**dropline_env(ready), **(env or {})},
            cwd=root,
            ready=ready,
            log_path=root / "daemon.log",
        )
    argv = [sys.executable, str(REFS / _SCRIPTS[kind.key]), str(tree.data), "--count", str(count)]
    if kind in (NAIVE, BATCHED):
        argv += ["--state", str(tree.state_db.parent / f"{kind.key}.db")]
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.update(ready.env)
    return Subject(argv, env=env, cwd=root, ready=ready, log_path=root / "ref.log")
