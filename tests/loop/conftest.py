"""The in-process tier: a daemon stepped in the test's own process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..harness import Tree
from .stepper import Stepper, stepped


@pytest.fixture
def step(tree: Tree) -> Iterator[Stepper]:
    """The daemon of the tree's configuration (written by the test first), in-process."""
    with stepped(tree) as stepper:
        yield stepper
