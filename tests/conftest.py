"""Shared fixtures: a fresh data tree per test, and daemons that never outlive their test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, make_tree
from .http_recorder import server  # noqa: F401 - a fixture for every test module


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
