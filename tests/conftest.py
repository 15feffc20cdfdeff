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


# --- make test runs the tests on two workers (pytest-xdist), then the serial ones ------


@pytest.hookimpl(tryfirst=True)  # before -m selects by it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The booted-systemd tier runs alone, after the others (``serial``): one boot of
    its container, its tests in order, on a host nothing else changes meanwhile."""
    for item in items:
        if item.path.relative_to(config.rootpath).parts[:2] == ("tests", "e2e"):
            item.add_marker(pytest.mark.serial)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The booted-systemd tier: how long booting, installing and starting took, the
    tier as a whole, and what its tests measured."""
    from .e2e.container import MEASURED, TIMINGS

    if not TIMINGS and not MEASURED:
        return
    terminalreporter.write_sep("-", "systemd end-to-end tier")
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{what:48} {seconds:7.2f} s")
    for line in MEASURED:
        terminalreporter.write_line(line)
