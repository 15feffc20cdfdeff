"""A pipeline's on_failure stages across a crash of a real daemon: a webhook told of
failures (the in-process tier, tests/loop/test_on_failure.py, steps the others).

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
