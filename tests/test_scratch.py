"""Scratch folders go when their item ends, whatever a stage left in them."""

from __future__ import annotations

import os
from pathlib import Path

from dropline.scratch import remove, sweep


def test_remove_takes_each_ended_items_folder_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    (root / "a" / "deep" / "er").mkdir(parents=True)
    (root / "a" / "out.csv").write_bytes(b"x")
    (root / "a" / "deep" / "er" / "f").write_bytes(b"y")
    (root / "b").mkdir()
    (root / "b" / "out.csv").write_bytes(b"z")
    os.symlink("/etc", root / "b" / "link")  # removed, never followed
    (root / "kept").mkdir()
    (root / "kept" / "f").write_bytes(b"k")
    remove(root, ["a", "b", "never-made"])
    assert sorted(os.listdir(root)) == ["kept"]
    assert (root / "kept" / "f").read_bytes() == b"k"
    assert os.path.isdir("/etc")


def test_sweep_keeps_the_items_in_flight(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    for name in ("x", "y", "z"):
        (root / name).mkdir(parents=True)
        (root / name / "f").write_bytes(b"f")
    (root / "stray-file").write_bytes(b"s")
    assert sweep(root, {"y"}) == 3
    assert os.listdir(root) == ["y"]
