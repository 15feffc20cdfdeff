"""Which bookkeeping is fsync'd: read from the statements the loop sends to SQLite.

An idempotent stage's start and success are committed without an fsync
(synchronous=NORMAL: a crash of the process loses nothing, a power loss may
take the record back and the stage runs again); a non-idempotent stage's
start, every failure, and a stage that rewrote the file are committed
durably (synchronous=FULL) before anything goes on.  Each batch's intent
(claim or finish) is durable before its renames; what the renames did is
committed without an fsync, since they are on disk already.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..harness import Tree
from ..test_stages import pipeline_yaml, sh_stage
from .stepper import Stepper, stepped


@dataclass
class Commit:
    """One transaction as SQLite saw it, and the synchronous level at its COMMIT."""

    statements: list[str] = field(default_factory=list)
    synchronous: str = ""

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, s) for s in self.statements)


def trace_commits(s: Stepper) -> list[Commit]:
    """Record every transaction of the daemon's connection from now on."""
    commits: list[Commit] = []
    level = ["FULL"]
    current: list[Commit | None] = [None]

    def seen(sql: str) -> None:
        text = " ".join(sql.split())
        if m := re.match(r"PRAGMA synchronous = (\w+)", text):
            level[0] = m.group(1)
        elif text.startswith("BEGIN"):
            current[0] = Commit()
        elif text == "COMMIT" and current[0] is not None:
            current[0].synchronous = level[0]
            commits.append(current[0])
            current[0] = None
        elif current[0] is not None:
            current[0].statements.append(text)

    s.daemon.scheduler.item_log.db.connection.set_trace_callback(seen)
    return commits


def the_one(commits: list[Commit], matches: Callable[[Commit], bool]) -> Commit:
    found = [c for c in commits if matches(c)]
    assert len(found) == 1, [c.statements for c in commits]
    return found[0]


def attempt_start(stage: str) -> Callable[[Commit], bool]:
    return lambda c: c.has(rf"INSERT INTO attempts .* VALUES \('[^']*', \d+, '{stage}'")


def test_only_a_non_idempotent_stage_start_and_failures_are_fsyncd(tree: Tree) -> None:
    stages = [
        sh_stage("quick", "exit 0"),
        sh_stage("once", "exit 0", idempotent=False),
        sh_stage("flaky", "exit 3", retries=0),
    ]
    tree.write_config(pipeline_yaml(stages))
    with stepped(tree) as s:
        commits = trace_commits(s)
        (tree.incoming / "a.csv").write_bytes(b"a\n")
        s.until(lambda: bool(s.find("file.failed")))
    assert the_one(commits, attempt_start("quick")).synchronous == "NORMAL"
    assert the_one(commits, attempt_start("once")).synchronous == "FULL"
    assert the_one(commits, attempt_start("flaky")).synchronous == "NORMAL"
    ends = [c for c in commits if c.has(r"UPDATE attempts SET ended_at")]
    assert len(ends) == 3, [c.statements for c in ends]
    # quick's success: no fsync; once's end (non-idempotent) and flaky's failure: fsync'd.
    assert [c.synchronous for c in ends] == ["NORMAL", "FULL", "FULL"]
    # The intents stay durable: the claim's and the finish's, each before its renames.
    claim = the_one(commits, lambda c: c.has(r"INSERT INTO items"))
    assert claim.synchronous == "FULL"
    intents = [c for c in commits if c.has(r"state = 'finishing'")]
    assert intents and all(c.synchronous == "FULL" for c in intents)
    # What the renames did is recorded without an fsync: they are on disk, and
    # recovery completes the intent before it when a power loss takes it back.
    claimed = the_one(commits, lambda c: c.has(r"SET state = 'active', pipeline = "))
    assert claimed.synchronous == "NORMAL"
    ended = the_one(commits, lambda c: c.has(r"SET state = v.column1, finished_at"))
    assert ended.synchronous == "NORMAL"


def test_a_stage_that_rewrites_the_file_commits_its_success_durably(tree: Tree) -> None:
    stages = [sh_stage("rewrite", 'printf "b\\nb\\n" > "$1"', "{path}", modifies=True)]
    tree.write_config(pipeline_yaml(stages))
    with stepped(tree) as s:
        commits = trace_commits(s)
        (tree.incoming / "a.csv").write_bytes(b"a\n")
        s.until(lambda: bool(s.find("file.archived")))
    (end,) = [c for c in commits if c.has(r"UPDATE attempts SET ended_at")]
    assert end.synchronous == "FULL"
    # Its start too: the claim before it may be in the WAL only, and a rewritten
    # file whose claim a power loss took back would come back as another item.
    assert the_one(commits, attempt_start("rewrite")).synchronous == "FULL"
    assert end.has(r"UPDATE items SET size = ")
    assert (tree.archive / "a.csv").read_bytes() == b"b\nb\n"
