"""A pipeline's on_failure stages, stepped in-process: a webhook told of failures.

The server is the recording HTTP server of http_recorder.py, on 127.0.0.1.
"""

from __future__ import annotations

import json

from ..harness import Tree
from ..http_recorder import Script
from ..test_on_failure import PIPELINE
from .stepper import stepped


def test_on_failure_webhook_tells_of_the_failure(tree: Tree, server: tuple[str, Script]) -> None:
    url, script = server
    tree.write_config(PIPELINE.format(url=url, retries=0))
    with stepped(tree) as s:
        (tree.incoming / "good.csv").write_text("id\n1\n2\n")
        (tree.incoming / "bad.csv").write_text("id\n1\nx\n")
        s.until(lambda: len(s.find("file.archived")) + len(s.find("file.failed")) == 2)
        stages = [e["stage"] for e in s.find("stage.started", file=b"bad.csv")]
        assert stages == ["validate", "tell-failure"]
    assert sorted(tree.archived()) == ["good.csv"]
    assert sorted(tree.failed_files()) == ["bad.csv"]
    by_path = {r.path: r.json() for r in script.received}
    ok = by_path["/hooks/dropline/ok"]
    assert (ok["name"], ok["outcome"], ok["rows"]) == ("good.csv", "succeeded", 2)
    failed = by_path["/hooks/dropline/failed"]
    assert (failed["name"], failed["outcome"], failed["stage"]) == ("bad.csv", "failed", "validate")
    assert 'line 3, column "id": "x" is not an integer' in failed["error"]
    error = json.loads((tree.failed / "bad.csv.error.json").read_text())
    assert error["stage"] == "validate" and "is not an integer" in error["error"]
    assert error["attempts"] == 1, "the failing stage's attempts, not the notifier's"


def test_a_failing_on_failure_stage_never_changes_the_outcome(
    tree: Tree, server: tuple[str, Script]
) -> None:
    url, script = server
    script.answers = [503]  # the failure hook never works
    tree.write_config(PIPELINE.format(url=url, retries=1))
    with stepped(tree) as s:
        (tree.incoming / "bad.csv").write_text("id\n1\nx\n")
        s.until(lambda: bool(s.find("stage.retrying", stage="tell-failure")))
        s.advance(1)  # past its backoff
        s.until(lambda: bool(s.find("file.failed")))
        assert s.find("file.failed")[0]["stage"] == "validate"
    assert sorted(tree.failed_files()) == ["bad.csv"]
    error = json.loads((tree.failed / "bad.csv.error.json").read_text())
    assert error["stage"] == "validate", "the file's own reason stands"
    attempts = tree.query(
        "SELECT a.stage, a.outcome FROM attempts a JOIN items i ON i.id = a.item_id "
        "WHERE i.name = ? ORDER BY a.id",
        (b"bad.csv",),
    )
    assert attempts == [
        ("validate", "failed"),
        ("tell-failure", "retrying"),
        ("tell-failure", "failed"),
    ]
