"""``dropline try FILE``: the route and its reason, the stages on a scratch copy,
nothing moved, recorded, loaded, published or sent; exit 0 only for a file
that would be archived.  Real stages against a real SQLite file, a real HTTP
server on loopback and real programs (postgres-load: tests/test_postgres_load.py).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .harness import Tree, cli_json, run_cli
from .http_recorder import Script

STAGES_PY = """
import json, os, sys

def shout(ctx):
    print("shouting about", ctx.name)
    ctx.log.info("shout.done", rows=3, names=["a", "b"])
    return {"shouted": ctx.rehearsal}

def child(ctx):
    os.system("echo from-a-child; echo to-stderr >&2")

def tell(ctx):
    with open(os.environ["TOLD"], "a") as f:
        f.write(json.dumps(ctx.metadata.get("failure")) + "\\n")
"""


def _pipelines(tmp: Path, url: str, db: Path, published: Path, marker: Path) -> str:
    return f"""
- name: orders
  match: ["orders-*.csv", "*.orders"]
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns: [{{name: id, type: integer}}, {{name: amount, type: decimal}}]
    - name: load
      builtin: sqlite-load
      with: {{database: {db}, table: orders}}
    - name: side-effect
      command: ["touch", "{marker}"]
    - name: count
      command: ["sh", "-c", "echo lines $(wc -l < \\"$DROPLINE_PATH\\") try=$DROPLINE_TRY"]
      try: run
    - name: shout
      python: "steps:shout"
      try: run
    - name: publish
      builtin: publish
      with: {{to: {published}}}
    - name: hook
      builtin: webhook
      with: {{url: "{url}", headers: {{Authorization: "Bearer s3cret"}}}}
  on_failure:
    - name: tell
      python: "steps:tell"
      try: run
    - name: hook-failure
      builtin: webhook
      with: {{url: "{url}"}}
- name: broken
  match: "*.broken"
  stages:
    - name: data-error
      command: ["sh", "-c", "echo row 2 is bad >&2; exit 65"]
      try: run
    - name: never
      builtin: noop
- name: strict
  match: "*.strict"
  stages:
    - name: talk
      python: "steps:child"
      try: run
    - name: publish
      builtin: publish
      with: {{to: {published}, if_exists: fail}}
- name: flaky
  match: "*.flaky"
  stages:
    - name: flaky
      command: ["sh", "-c", "echo connection refused; exit 3"]
      try: run
      retries: 4
"""


@pytest.fixture
def setup(
    tree: Tree, tmp_path: Path, server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    url, script = server
    steps = tmp_path / "pipelines"
    steps.mkdir()
    (steps / "steps.py").write_text(STAGES_PY)
    db = tmp_path / "target" / "orders.db"
    db.parent.mkdir()
    published = tmp_path / "published"
    published.mkdir()
    marker = tmp_path / "side-effect-ran"
    tree.write_config(
        _pipelines(tmp_path, url, db, published, marker),
        pipelines_dir=str(steps),
        ignore='[".*", "*.tmp"]',
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    told = tmp_path / "told"
    # The try's own scratch folder, and where the failure stage writes: both watched.
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("TOLD", str(told))
    return {
        "url": url,
        "script": script,
        "db": db,
        "published": published,
        "marker": marker,
        "scratch": scratch,
        "told": told,
    }


def _try(tree: Tree, path: Path, *more: str, expect: int) -> dict[str, Any]:
    return cli_json(tree, "try", str(path), *more, schema="try", expect=expect)


def _untouched(tree: Tree, setup: dict[str, Any]) -> None:
    """Nothing of the daemon's counted: no state, no folder written, nothing left behind."""
    assert not tree.state_db.exists()
    assert not any(tree.working.iterdir()) and not any(tree.archive.iterdir())
    assert not any(tree.failed.iterdir())
    assert not any(setup["published"].iterdir())
    assert not setup["marker"].exists()
    assert setup["script"].received == []
    assert list(setup["scratch"].iterdir()) == []


def test_a_good_file_would_be_archived_and_nothing_counts(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    db = sqlite3.connect(setup["db"])
    db.execute("CREATE TABLE orders (id INTEGER, amount TEXT, dropline_item TEXT NOT NULL)")
    db.execute("INSERT INTO orders VALUES (7, '1.00', 'earlier')")
    db.commit()
    db.close()
    sample = tmp_path / "orders-1.csv"
    sample.write_text("id,amount\n1,2.50\n2,3.75\n")
    doc = _try(tree, sample, expect=0)
    assert doc["outcome"] == "archived" and doc["reason"] is None
    assert doc["route"]["pipeline"] == "orders" and doc["route"]["glob"] == "orders-*.csv"
    stages = {s["stage"]: s for s in doc["stages"]}
    assert [s["stage"] for s in doc["stages"]] == [
        "validate",
        "load",
        "side-effect",
        "count",
        "shout",
        "publish",
        "hook",
    ]
    assert stages["load"]["metadata"]["would"] == (
        "load 2 rows into orders: loaded, then rolled back"
    )
    assert stages["side-effect"]["outcome"] == "skipped" and doc["skipped"] == ["side-effect"]
    # The command ran on the copy, told it is a try; its output is shown.
    assert stages["count"]["output"] == ["lines 3 try=1"]
    assert stages["shout"]["metadata"] == {"shouted": True}
    assert stages["shout"]["output"] == [
        "shouting about orders-1.csv",
        'info: shout.done rows=3 names=["a", "b"]',
    ]
    assert "publish a copy as" in stages["publish"]["metadata"]["would"]
    hook = stages["hook"]["metadata"]["would"]
    assert hook.startswith(f"POST {setup['url']} (")
    assert "Authorization" in hook and "s3cret" not in hook
    # The target table holds what it held; the file is where it was, unchanged.
    rows = sqlite3.connect(setup["db"]).execute("SELECT id FROM orders").fetchall()
    assert rows == [(7,)]
    assert sample.read_text() == "id,amount\n1,2.50\n2,3.75\n"
    _untouched(tree, setup)


def test_a_database_or_a_table_a_try_would_create_is_not_left_behind(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    sample = tmp_path / "orders-2.csv"
    sample.write_text("id,amount\n1,2.50\n")
    doc = _try(tree, sample, expect=0)
    assert not setup["db"].exists()  # connecting would have made it
    assert doc["stages"][1]["metadata"]["would"] == (
        f"create {setup['db']} and load 1 rows into orders"
    )
    sqlite3.connect(setup["db"]).close()  # an empty database: the table would be made
    _try(tree, sample, expect=0)
    tables = sqlite3.connect(setup["db"]).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []


def test_publish_is_judged_as_the_stage_judges_it(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    """if_exists: fail and a different file there: the file would fail, as it would under
    the daemon; the same content there: nothing to copy, it would be archived.  What a
    program a stage starts prints is the stage's output, never in try's JSON."""
    sample = tmp_path / "x.strict"
    sample.write_text("the data\n")
    there = setup["published"] / "x.strict"
    there.write_text("other data\n")
    doc = _try(tree, sample, expect=1)
    assert doc["reason"] == f"publish: permanent error: publish: {there} already exists"
    talk = doc["stages"][0]
    assert sorted(talk["output"]) == ["from-a-child", "to-stderr"]
    there.write_text("the data\n")
    doc = _try(tree, sample, expect=0)
    assert doc["stages"][1]["metadata"]["would"] == (
        f'nothing to copy: "{there}" holds the same content already'
    )
    there.unlink()


def test_a_bad_file_would_fail_with_the_daemons_reason_and_its_on_failure_stages(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    sample = tmp_path / "orders-3.csv"
    sample.write_text("id,amount\nx,2.50\n")
    doc = _try(tree, sample, expect=1)
    assert doc["outcome"] == "failed" and not doc["retriable"]
    assert doc["reason"].startswith("validate: permanent error: line 2")
    assert [(s["stage"], s["part"], s["outcome"]) for s in doc["stages"]] == [
        ("validate", "stages", "permanent"),
        ("tell", "on_failure", "succeeded"),
        ("hook-failure", "on_failure", "succeeded"),
    ]
    told = setup["told"].read_text().splitlines()
    assert len(told) == 1 and '"stage": "validate"' in told[0]
    assert setup["script"].received == []  # the failure's webhook was described, not sent
    # The text for people says the same.
    text = run_cli("try", str(sample), "--config", str(tree.config))
    assert text.returncode == 1
    assert "Outcome: would fail: validate: permanent error: line 2" in text.stdout


def test_a_program_exit_65_fails_at_once_and_another_would_be_retried(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "x.broken"
    bad.write_text("data\n")
    doc = _try(tree, bad, expect=1)
    assert doc["reason"] == "data-error: permanent error: exit status 65: row 2 is bad"
    assert [s["stage"] for s in doc["stages"]] == ["data-error"]  # the rest never ran
    flaky = tmp_path / "x.flaky"
    flaky.write_text("data\n")
    doc = _try(tree, flaky, expect=1)
    assert doc["retriable"] is True
    assert doc["reason"] == "flaky: failed after 5 attempt(s): exit status 3: connection refused"
    text = run_cli("try", str(flaky), "--config", str(tree.config))
    assert "a retriable error: the daemon would try again" in text.stdout


def test_the_route_is_told_with_its_reason(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    ignored = tmp_path / "orders-4.csv.tmp"
    ignored.write_text("id,amount\n")
    doc = _try(tree, ignored, expect=1)
    assert doc["outcome"] == "ignored" and doc["route"]["glob"] == "*.tmp"
    assert doc["stages"] == []
    nowhere = tmp_path / "notes.txt"
    nowhere.write_text("hello\n")
    doc = _try(tree, nowhere, expect=1)
    assert (doc["outcome"], doc["reason"]) == ("failed", "no pipeline matches this name")
    # --pipeline runs another pipeline's stages, and still tells where the name goes.
    chosen = tmp_path / "weekly.orders"
    chosen.write_text("id,amount\n1,2\n")
    doc = _try(tree, chosen, "--pipeline", "broken", expect=1)
    assert doc["pipeline"] == "broken" and doc["route"]["pipeline"] == "orders"
    assert doc["route"]["glob"] == "*.orders" and doc["route"]["chosen"] == "broken"
    wrong = run_cli("try", str(chosen), "--pipeline", "nope", "--config", str(tree.config))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert 'no pipeline "nope" (pipelines: orders, broken, strict, flaky)' in wrong.stderr
    gone = run_cli("try", str(tmp_path / "missing.csv"), "--config", str(tree.config))
    assert gone.returncode == 2 and "missing.csv: no such file" in gone.stderr
    _untouched(tree, setup)


def test_a_hostile_entry_is_refused_without_following_or_blocking(
    tree: Tree, setup: dict[str, Any], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("id,amount\n1,2\n")
    link = tmp_path / "orders-link.csv"
    link.symlink_to(secret)
    doc = _try(tree, link, expect=1)
    assert doc["outcome"] == "refused" and "symbolic link" in doc["reason"]
    assert doc["sha256"] is None  # never read
    fifo = tmp_path / "orders-fifo.csv"
    os.mkfifo(fifo)
    doc = _try(tree, fifo, expect=1)  # returns at all: the FIFO was never opened
    assert doc["outcome"] == "refused" and "FIFO" in doc["reason"]
    hard = tmp_path / "orders-hard.csv"
    os.link(secret, hard)
    doc = _try(tree, hard, expect=1)
    assert doc["outcome"] == "refused" and "2 hard links" in doc["reason"]
    _untouched(tree, setup)


def test_a_stage_says_what_try_does_with_it_and_nothing_else(tree: Tree) -> None:
    tree.write_config(
        """
- name: p
  match: "*"
  stages:
    - name: s
      command: ["true"]
      try: maybe
"""
    )
    done = run_cli("check", "--config", str(tree.config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = tree.config.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip() == "try: maybe")
    assert f"{tree.config}:{line}: pipelines[0].stages[0].try:" in done.stderr
    assert 'expected one of "run", "skip", got a string "maybe"' in done.stderr


def test_help_has_examples() -> None:
    done = run_cli("try", "--help")
    assert done.returncode == 0 and "Examples:" in done.stdout and "try: run" in done.stdout


def test_a_program_that_cannot_start_is_not_the_files_fault(tree: Tree, tmp_path: Path) -> None:
    tree.write_config(
        f"""
- name: p
  match: "*"
  stages:
    - name: convert
      command: ["{tmp_path / "missing"}", "{{path}}"]
      try: run
"""
    )
    sample = tmp_path / "x.txt"
    sample.write_text("x\n")
    doc = _try(tree, sample, expect=1)
    (stage,) = doc["stages"]
    assert stage["outcome"] == "unavailable" and doc["retriable"] is True
    assert "the program cannot be started" in doc["reason"]
