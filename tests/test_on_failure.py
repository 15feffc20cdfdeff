"""A pipeline's on_failure stages through a real daemon: a webhook told of failures.

The server is the recording HTTP server of http_recorder.py, on 127.0.0.1.
"""

from __future__ import annotations

import json

from .harness import Tree, crash_run, run_until_idle
from .http_recorder import Script

PIPELINE = """
- name: orders
  match: "*.csv"
  stages:
    - name: validate
      builtin: validate-csv
      with:
        columns: [{{name: id, type: integer}}]
    - name: tell-success
      builtin: webhook
      with: {{url: "{url}/ok", backoff: 10ms, attempts: 1}}
      retries: 0
  on_failure:
    - name: tell-failure
      builtin: webhook
      with: {{url: "{url}/failed", backoff: 10ms, attempts: 1}}
      retries: {retries}
      backoff: {{initial: 50ms, max: 50ms}}
"""


def _drop(tree: Tree) -> None:
    (tree.incoming / "good.csv").write_text("id\n1\n2\n")
    (tree.incoming / "bad.csv").write_text("id\n1\nx\n")


def test_on_failure_webhook_tells_of_the_failure(tree: Tree, server: tuple[str, Script]) -> None:
    url, script = server
    tree.write_config(PIPELINE.format(url=url, retries=0))
    _drop(tree)
    assert run_until_idle(tree) == 0
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
    (tree.incoming / "bad.csv").write_text("id\n1\nx\n")
    assert run_until_idle(tree) == 0
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


def test_on_failure_resumes_after_a_crash(tree: Tree, server: tuple[str, Script]) -> None:
    url, script = server
    tree.write_config(PIPELINE.format(url=url, retries=0))
    (tree.incoming / "bad.csv").write_text("id\nx\n")
    # 1: validate starts, 2: tell-failure starts -> killed there.
    crash_run(tree, "stage.start_committed#2")
    assert not tree.failed_files()
    assert run_until_idle(tree) == 0
    assert sorted(tree.failed_files()) == ["bad.csv"]
    told = [r.json() for r in script.received if r.path.endswith("/failed")]
    assert len(told) == 1 and told[0]["outcome"] == "failed"
    error = json.loads((tree.failed / "bad.csv.error.json").read_text())
    assert error["stage"] == "validate"
