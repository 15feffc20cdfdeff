"""Shared fixtures: a fresh data tree per test, daemons that never outlive their test,
and guards that fail a test leaving a thread running or raising a warning."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, make_tree
from .http_recorder import server  # noqa: F401 - a fixture for every test module
from .pg import pg  # noqa: F401 - a fixture for every test module


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """A data tree (incoming, working, archive, failed) and a state directory."""
    return make_tree(tmp_path)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Collects the daemons a test starts and kills any still running at its end."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def start_daemon(tree: Tree, daemons: list[DaemonProcess]) -> Any:
    """start_daemon(**kwargs) -> DaemonProcess on the test's tree, killed at teardown."""

    def start(**kwargs: Any) -> DaemonProcess:
        proc = DaemonProcess(tree, **kwargs)
        daemons.append(proc)
        return proc

    return start


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every thread the test started has ended a moment after it (the daemon's
    parts join their threads when they close)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while leaked := [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        if time.monotonic() > deadline:
            pytest.fail(f"threads left running: {sorted(t.name for t in leaked)}")
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _no_warnings(recwarn: pytest.WarningsRecorder) -> Iterator[None]:
    yield
    assert not [f"{w.category.__name__}: {w.message}" for w in recwarn.list]
