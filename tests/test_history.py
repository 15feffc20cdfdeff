"""``dropline history`` found by glob, path, the name as printed, time window,
pipeline and outcome: newest first, a page at a time, from a real daemon's
state."""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from .harness import DaemonProcess, Tree, cli_json, run_cli, run_until_idle

PIPELINES = """
- name: orders
  match: "orders-*.csv"
- name: bad
  match: "*.bad"
  stages:
    - name: reject
      command: ["sh", "-c", "echo 'no good' >&2; exit 65"]
- name: other
  match: "*"
"""


def _drop(folder: Path, names: list[str]) -> None:
    for name in names:
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(b"data of " + os.fsencode(name) + b"\n")
        os.rename(tmp, folder / name)


@pytest.fixture
def filled(tree: Tree) -> Tree:
    """Two rounds of files, one run each: orders, failures, a folder, an odd name."""
    tree.write_config(PIPELINES)
    _drop(tree.incoming, ["orders-1.csv", "orders-2.csv", "x.bad", "notes.txt"])
    assert run_until_idle(tree) == 0
    (tree.incoming / "batch").mkdir()
    _drop(tree.incoming / "batch", ["orders-3.csv"])
    _drop(tree.incoming, ["orders-4.csv", "y.bad", os.fsdecode(b"odd\nname-\xff.txt")])
    assert run_until_idle(tree) == 0
    return tree


def _files(doc: dict[str, object]) -> list[str]:
    items = doc["items"]
    assert isinstance(items, list)
    return [str(i["file"]) for i in items]


def test_a_glob_lists_the_files_it_matches_newest_first_and_in_folders(filled: Tree) -> None:
    doc = cli_json(filled, "history", "orders-*", schema="history")
    assert doc["listed"] is True and doc["more"] is False
    files = _files(doc)
    assert sorted(files) == ["batch/orders-3.csv", "orders-1.csv", "orders-2.csv", "orders-4.csv"]
    # Newest first: the second round before the first.
    assert set(files[:2]) == {"batch/orders-3.csv", "orders-4.csv"}
    assert set(files[2:]) == {"orders-1.csv", "orders-2.csv"}
    claimed = [str(i["claimed_at"]) for i in doc["items"]]
    assert claimed == sorted(claimed, reverse=True)
    assert _files(cli_json(filled, "history", "orders-[!3]*", schema="history")) == [
        f for f in files if f != "batch/orders-3.csv"
    ]
    human = run_cli("history", "orders-*", "--config", str(filled.config))
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].split()[:3] == ["CLAIMED", "ITEM", "FILE"]
    assert len(lines) == 5, "one line per file"


def test_pages_of_the_newest(filled: Tree) -> None:
    everything = _files(cli_json(filled, "history", "--per-page", "50", schema="history"))
    assert len(everything) == 8
    first = cli_json(filled, "history", "--per-page", "3", schema="history")
    second = cli_json(filled, "history", "--per-page", "3", "--page", "2", schema="history")
    third = cli_json(filled, "history", "--per-page", "3", "--page", "3", schema="history")
    assert (first["more"], second["more"], third["more"]) == (True, True, False)
    assert _files(first) + _files(second) + _files(third) == everything
    human = run_cli("history", "--per-page", "3", "--config", str(filled.config))
    assert "More: the same with --page 2" in human.stdout
    beyond = run_cli("history", "--page", "9", "--config", str(filled.config))
    assert beyond.returncode == 1 and "on page 9" in beyond.stderr


def test_a_path_or_the_name_as_printed_finds_the_file(filled: Tree) -> None:
    archived = next(p for p in filled.archive.rglob("orders-4.csv"))
    doc = cli_json(filled, "history", str(archived), schema="history")
    assert doc["listed"] is False and _files(doc) == ["orders-4.csv"]
    assert _files(cli_json(filled, "history", "batch/orders-3.csv", schema="history")) == [
        "batch/orders-3.csv"
    ]
    # The odd name, pasted as status and the journal print it (escaped).
    printed = "odd\\nname-\\xff.txt"
    doc = cli_json(filled, "history", printed, schema="history")
    assert _files(doc) == [printed]
    missing = run_cli("history", "gone\\n.csv", "--config", str(filled.config))
    assert missing.returncode == 1
    assert 'no file named "gone\\n.csv"' in missing.stderr, "escaped once, not twice"


def test_filters_pipeline_outcome_and_time_window(filled: Tree) -> None:
    failed = cli_json(filled, "history", "--outcome", "failed", schema="history")
    assert sorted(_files(failed)) == ["x.bad", "y.bad"]
    assert all(i["state"] == "failed" for i in failed["items"])
    orders = cli_json(filled, "history", "--pipeline", "orders", schema="history")
    assert len(_files(orders)) == 4
    both = cli_json(filled, "history", "*.bad", "--pipeline", "bad", schema="history")
    assert sorted(_files(both)) == ["x.bad", "y.bad"]
    # A window around the second round only: claimed since its first claim.
    rows = sorted(float(at) for (at,) in filled.query("SELECT created_at FROM items"))
    second_round = rows[4]  # four files in the first round
    since = str(second_round - 0.0005)

    stamp = datetime.datetime.fromtimestamp(float(since)).isoformat()
    window = cli_json(filled, "history", "--since", stamp, "--per-page", "50", schema="history")
    assert sorted(_files(window)) == sorted(
        ["batch/orders-3.csv", "orders-4.csv", "y.bad", "odd\\nname-\\xff.txt"]
    )
    before = cli_json(filled, "history", "--until", stamp, "--per-page", "50", schema="history")
    assert sorted(_files(before)) == ["notes.txt", "orders-1.csv", "orders-2.csv", "x.bad"]
    none = run_cli("history", "--outcome", "vanished", "--config", str(filled.config))
    assert none.returncode == 1 and "state vanished" in none.stderr
    bad = run_cli("history", "--until", "soonish", "--config", str(filled.config))
    assert bad.returncode == 2 and "--until" in bad.stderr


def _run_logged(tree: Tree) -> list[dict[str, Any]]:
    """Run the daemon until idle; the events it logged."""
    daemon = DaemonProcess(tree, args=("--exit-when-idle",))
    try:
        assert daemon.wait(60) == 0
        return daemon.events()
    finally:
        daemon.kill()


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


def test_every_moment_is_written_one_way(tree: Tree) -> None:
    """The log, --json, and NAME.error.json write a moment alike: RFC 3339, local
    time with its offset, to the millisecond; each reads back to the same instant."""
    tree.write_config(PIPELINES)
    _drop(tree.incoming, ["z.bad"])
    events = _run_logged(tree)
    stamps = [str(e["timestamp"]) for e in events]
    assert stamps and all(_RFC3339.fullmatch(s) for s in stamps), stamps[:3]
    reason = json.loads((tree.failed / "z.bad.error.json").read_text())
    doc = cli_json(tree, "history", "z.bad", schema="history")
    (item,) = doc["items"]
    written = [reason["failed_at"], reason["claimed_at"], item["claimed_at"], item["finished_at"]]
    assert all(_RFC3339.fullmatch(str(s)) for s in written), written
    assert datetime.datetime.fromisoformat(reason["failed_at"]).utcoffset() is not None
    failed = [e for e in events if e["event"] == "file.failed"]
    at = datetime.datetime.fromisoformat(str(failed[0]["timestamp"])).timestamp()
    assert abs(at - datetime.datetime.fromisoformat(item["finished_at"]).timestamp()) < 5


def test_an_attempt_has_one_duration_in_the_log_and_the_history(tree: Tree) -> None:
    """The seconds the log gives a stage attempt are the ones history shows (the
    stage's own time, kept in its row), not the time between two records."""
    tree.write_config(
        """
- name: slowish
  match: "*"
  stages:
    - name: nap
      command: ["sleep", "0.05"]
"""
    )
    _drop(tree.incoming, ["a.txt", "b.txt", "c.txt"])
    events = _run_logged(tree)
    logged = {str(e["file"]): e["seconds"] for e in events if e["event"] == "stage.succeeded"}
    assert sorted(logged) == ["a.txt", "b.txt", "c.txt"]
    for name, seconds in logged.items():
        (item,) = cli_json(tree, "history", name, schema="history")["items"]
        (stage,) = [s for s in item["timeline"] if s["event"] == "stage"]
        assert stage["seconds"] == seconds, (name, stage, seconds)
        assert 0.04 <= float(seconds) < 10
    stored = [s for (s,) in tree.query("SELECT seconds FROM attempts")]
    assert len(stored) == 3 and all(s is not None for s in stored)


def test_escaped_names_read_back_as_they_were() -> None:
    """Every name escape_text prints reads back to its bytes: what status printed
    finds the file (a C1 control, a no-break space, a character past U+FFFF)."""
    from dropline.escaping import escape_text, unescape_text

    names = [
        b"plain.csv",
        b"bad-\xff\xfe.csv",
        "nbsp\u00a0soft\u00ad.csv".encode(),
        "c1-\u0085-\u009b.csv".encode(),
        "far-\U000f0000.csv".encode(),
        b"ctl-\x01\x1b[31m.csv",
        b"back\\slash\\x41.csv",
        "rlo-\u202e.csv".encode(),
    ]
    for name in names:
        assert unescape_text(escape_text(name)) == name, (name, escape_text(name))


def test_a_name_with_glob_characters_is_found_as_a_name(tree: Tree) -> None:
    tree.write_config(PIPELINES)
    _drop(tree.incoming, ["scan[1].pdf", "scan1.pdf"])
    assert run_until_idle(tree) == 0
    doc = cli_json(tree, "history", "scan[1].pdf", schema="history")
    assert doc["listed"] is False and _files(doc) == ["scan[1].pdf"]
    assert sorted(_files(cli_json(tree, "history", "scan*", schema="history"))) == [
        "scan1.pdf",
        "scan[1].pdf",
    ]
