"""Stages, retries and their backoff, stepped in-process on the loop's own clock."""

from __future__ import annotations

from pathlib import Path

from ..harness import Tree
from ..test_stages import attempts_of, error_doc, pipeline_yaml, sh_stage
from .stepper import stepped


def test_a_file_runs_its_stages_in_order_then_is_archived(tree: Tree) -> None:
    stages = [sh_stage(name, "exit 0") for name in ("ingest", "validate", "load")]
    tree.write_config(pipeline_yaml(stages))
    with stepped(tree) as s:
        (tree.incoming / "a.csv").write_bytes(b"a\n")
        s.until(lambda: bool(s.find("file.archived")))
        flow = [
            (e["event"], e.get("stage"))
            for e in s.events
            if e["event"] in ("file.claimed", "stage.started", "stage.succeeded", "file.archived")
        ]
    assert flow == [
        ("file.claimed", None),
        ("stage.started", "ingest"),
        ("stage.succeeded", "ingest"),
        ("stage.started", "validate"),
        ("stage.succeeded", "validate"),
        ("stage.started", "load"),
        ("stage.succeeded", "load"),
        ("file.archived", None),
    ]
    assert (tree.archive / "a.csv").read_bytes() == b"a\n"


def test_a_retry_waits_for_its_backoff_on_the_loops_clock(tree: Tree, tmp_path: Path) -> None:
    """Fails once, then works: the retry is due after its backoff (here half an hour
    to an hour), by the loop's monotonic clock, and not one pass before."""
    flag = tmp_path / "failed-once"
    stage = sh_stage(
        "flaky",
        'test -e "$1" || { touch "$1"; echo "not yet" >&2; exit 1; }',
        str(flag),
        retries=2,
        backoff={"initial": "1h", "max": "1h"},
    )
    tree.write_config(pipeline_yaml([stage]))
    with stepped(tree) as s:
        (tree.incoming / "r.txt").write_bytes(b"r")
        s.until(lambda: bool(s.find("stage.retrying")))
        retrying = s.find("stage.retrying")[0]
        assert (retrying["attempt"], retrying["of"]) == (1, 3)
        assert 1800 <= retrying["delay"] <= 3600
        for _ in range(50):
            s.step()
        assert len(s.find("stage.started")) == 1, "retried before its backoff was over"
        s.advance(retrying["delay"] - 1)
        s.step()
        assert len(s.find("stage.started")) == 1, "retried a second early"
        s.advance(1)
        s.until(lambda: bool(s.find("file.archived")))
    assert [(a, o) for a, o, _, _ in attempts_of(tree, "r.txt")] == [
        (1, "retrying"),
        (2, "succeeded"),
    ]


def test_retries_exhausted_fail_the_file(tree: Tree) -> None:
    """A stage that always exits 1 runs 1 + retries times, then the file goes to failed/."""
    stage = sh_stage(
        "always", 'echo "nope" >&2; exit 1', retries=2, backoff={"initial": "1m", "max": "2m"}
    )
    tree.write_config(pipeline_yaml([stage]))
    with stepped(tree) as s:
        (tree.incoming / "x.txt").write_bytes(b"x")
        for retries in (1, 2):

            def retried(n: int = retries) -> bool:
                return len(s.find("stage.retrying")) == n

            s.until(retried)
            s.advance(120)
        s.until(lambda: bool(s.find("file.failed")))
        failed = s.find("stage.failed")
        assert [(e["attempt"], e["kind"]) for e in failed] == [(3, "failed after 3 attempt(s)")]
    assert (tree.failed / "x.txt").read_bytes() == b"x"
    doc = error_doc(tree, "x.txt")
    assert doc["attempts"] == 3
    assert "exit status 1" in doc["error"] and "always" in doc["error"]
    rows = attempts_of(tree, "x.txt")
    assert [(a, o) for a, o, _, _ in rows] == [(1, "retrying"), (2, "retrying"), (3, "failed")]


def test_exit_65_fails_at_once_without_retries(tree: Tree) -> None:
    """Exit 65 (EX_DATAERR) fails the file at once although retries are allowed."""
    stage = sh_stage("validate", 'echo "bad header" >&2; exit 65', retries=5)
    tree.write_config(pipeline_yaml([stage]))
    with stepped(tree) as s:
        (tree.incoming / "d.csv").write_bytes(b"a,b\n")
        s.until(lambda: bool(s.find("file.failed")))
        assert not s.find("stage.retrying")
        assert s.find("stage.failed")[0]["kind"] == "permanent error"
    assert (tree.failed / "d.csv").read_bytes() == b"a,b\n"
    doc = error_doc(tree, "d.csv")
    assert "exit status 65" in doc["error"]
    assert "validate" in doc["error"]
    assert "bad header" in doc["error"]
    assert doc["stage"] == "validate"
    assert doc["attempts"] == 1
    assert [(a, o) for a, o, _, _ in attempts_of(tree, "d.csv")] == [(1, "failed")]


def test_a_file_no_pipeline_matches_fails_with_its_reason(tree: Tree) -> None:
    tree.write_config(pipeline_yaml([sh_stage("one", "exit 0")], match="*.csv"))
    with stepped(tree) as s:
        (tree.incoming / "notes.txt").write_bytes(b"n")
        s.until(lambda: bool(s.find("file.failed")))
        assert s.find("file.failed")[0]["reason"] == "no pipeline matches this name"
        assert not s.find("stage.started")


def test_failing_files_never_stop_the_others(tree: Tree) -> None:
    """Of 20 files, 5 fail permanently; the 15 others archive."""
    script = 'case "$1" in *bad*) echo "rejected $1" >&2; exit 65;; esac'
    tree.write_config(pipeline_yaml([sh_stage("check", script, "{name}", retries=3)]))
    names = [f"bad{i}.txt" if i % 4 == 0 else f"good{i}.txt" for i in range(20)]
    with stepped(tree) as s:
        for name in names:
            (tree.incoming / name).write_bytes(name.encode())
        s.until(lambda: len(s.find("file.archived")) + len(s.find("file.failed")) == 20)
        assert s.daemon.ctx.events.counts == {"archived": 15, "failed": 5}
    good = {n for n in names if n.startswith("good")}
    bad = {n for n in names if n.startswith("bad")}
    archived = tree.archived()
    assert set(archived) == good
    assert all(archived[n].read_bytes() == n.encode() for n in good)
    assert set(tree.failed_files()) == bad
    for name in bad:
        doc = error_doc(tree, name)
        assert "exit status 65" in doc["error"] and f"rejected {name}" in doc["error"]
        assert doc["attempts"] == 1
    by_state = "SELECT state, count(*) FROM items GROUP BY state ORDER BY state"
    assert tree.query(by_state) == [("archived", 15), ("failed", 5)]


def test_a_stop_past_stop_timeout_interrupts_or_fails_the_running_stages(
    tree: Tree, tmp_path: Path
) -> None:
    """Past stop_timeout the loop cancels what still runs: an idempotent stage is
    interrupted (it runs again after the restart), a non-idempotent one fails as
    indeterminate; then the loop says it is done."""
    started = tmp_path / "started"
    script = 'touch "$1.$2"; exec sleep 60'
    again = sh_stage("again", script, str(started), "{name}")
    once = sh_stage("once", script, str(started), "{name}", idempotent=False)
    config = pipeline_yaml([again], name="again", match="again*") + pipeline_yaml(
        [once], name="once", match="once*"
    )
    tree.write_config(config, stop_timeout="10m")
    with stepped(tree) as s:
        (tree.incoming / "again.txt").write_bytes(b"a")
        (tree.incoming / "once.txt").write_bytes(b"o")
        s.until(lambda: len(s.find("stage.started")) == 2)
        s.flags.request_stop()
        assert not s.step(), "stopped while stages still run"
        assert s.find("daemon.stopping")
        s.advance(600)  # stop_timeout is over: the stages are cancelled
        s.until(lambda: len(s.find("stage.interrupted")) + len(s.find("stage.failed")) == 2)
        assert [e["file"] for e in s.find("stage.interrupted")] == [b"again.txt"]
        (failed,) = s.find("stage.failed")
        assert failed["file"] == b"once.txt" and "indeterminate" in failed["error"]
        s.until(lambda: s.step())  # the loop is done
    assert (tree.failed / "once.txt").read_bytes() == b"o"
    assert (tree.working / "again.txt").exists(), "it runs again after the restart"
