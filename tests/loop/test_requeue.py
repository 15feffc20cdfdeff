"""``dropline retry`` as the loop serves it: a request left in the database sends a
failed file back through its pipeline."""

from __future__ import annotations

import time
from pathlib import Path

from dropline.state import Database, RequestQueue

from ..harness import Tree
from ..test_stages import pipeline_yaml, sh_stage
from .stepper import stepped


def test_a_retry_request_sends_a_failed_file_through_again(tree: Tree, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    stage = sh_stage("load", 'test -e "$1" || exit 65', str(fixed))
    tree.write_config(pipeline_yaml([stage]))
    with stepped(tree) as s:
        (tree.incoming / "f.csv").write_bytes(b"f\n")
        s.until(lambda: bool(s.find("file.failed")))
        item = s.find("file.failed")[0]["item"]
        assert s.daemon.ctx.events.counts == {"archived": 0, "failed": 1}
        fixed.touch()
        db = Database(tree.state_db)  # as `dropline retry` leaves it
        try:
            requests = RequestQueue(db)
            with db.transaction():
                (request,) = requests.add_requests("retry", [item], time.time())
            s.until(lambda: bool(s.find("file.archived")))
            assert requests.request_results([request]) == {request: "requeued"}
        finally:
            db.close()
        assert [e["item"] for e in s.find("file.requeued")] == [item]
        assert s.daemon.ctx.events.counts == {"archived": 1, "failed": 0}
    assert (tree.archive / "f.csv").read_bytes() == b"f\n"
    assert not (tree.failed / "f.csv").exists()
    assert not (tree.failed / "f.csv.error.json").exists()


def test_a_retry_request_for_a_file_not_failed_is_refused(tree: Tree) -> None:
    tree.write_config(pipeline_yaml([sh_stage("one", "exit 0")]))
    with stepped(tree) as s:
        (tree.incoming / "ok.csv").write_bytes(b"o\n")
        s.until(lambda: bool(s.find("file.archived")))
        item = s.find("file.archived")[0]["item"]
        db = Database(tree.state_db)
        try:
            requests = RequestQueue(db)
            with db.transaction():
                (request,) = requests.add_requests("retry", [item], time.time())
            s.until(lambda: bool(s.find("retry.refused")))
            assert requests.request_results([request]) == {request: "it is archived, not failed"}
        finally:
            db.close()
