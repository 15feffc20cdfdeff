"""The lock files: consistent with pyproject.toml and with each other, and the
environment the tests run in holds exactly what its lock says."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .harness import REPO

LOCKS = REPO / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(path: Path, *, applicable_only: bool = True) -> dict[str, str]:
    """NAME -> version of the pins in a lock file (those whose marker holds here)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if not match:
            continue
        name, version, marker = match.groups()
        if applicable_only and marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = version
    return pins


def test_every_lock_entry_is_pinned_with_hashes() -> None:
    for path in (LOCKS / "run.txt", LOCKS / "test.txt"):
        text = path.read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert blocks, path
        for block in blocks:
            head = block.splitlines()[0]
            assert "==" in head, f"{path.name}: not pinned: {head}"
            assert "--hash=sha256:" in block, f"{path.name}: no hash for {head}"


def test_run_lock_is_the_test_lock_less_the_test_tools() -> None:
    run = locked(LOCKS / "run.txt", applicable_only=False)
    test = locked(LOCKS / "test.txt", applicable_only=False)
    assert {n: test.get(n) for n in run} == run, "a package locked at two versions"
    for tool in ("pytest", "mypy", "ruff"):
        assert tool in test and tool not in run, tool
    for tool in ("pip", "setuptools", "wheel"):
        assert tool in run, f"the build tool {tool} is not locked"


def test_the_locks_satisfy_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    test = locked(LOCKS / "test.txt")
    run = locked(LOCKS / "run.txt")
    wanted = [(req, run) for req in project["dependencies"]]
    wanted += [(req, test) for req in project["optional-dependencies"]["test"]]
    for text, pins in wanted:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not locked"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])


def test_the_environment_holds_exactly_the_locked_versions() -> None:
    stamp = Path(sys.prefix) / ".lock"
    if not stamp.exists():
        pytest.skip("this environment was not built from a lock (make test-newest builds one)")
    lock = locked(REPO / stamp.read_text().strip())
    installed: dict[str, str] = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions(path=[p for p in sys.path if p.startswith(sys.prefix)])
    }
    installed.pop("dropline", None)
    assert installed == lock
