"""A file's stages in the worker processes go back to the worker whose child ran
its previous stage (``jobqueues.py``), so what that child keeps of the file (a
CSV's parse) serves the next stage; a worker with nothing to run still takes
a file meant for a busy one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dropline.jobqueues import JobQueues

from ..harness import Tree
from .stepper import stepped

# Each stage adds the pid of the child that ran it to the file's metadata.
PIDS_PY = (
    "import os\n\n\ndef run(ctx):\n"
    "    return {'pids': [*ctx.metadata.get('pids', []), os.getpid()]}\n"
)


def test_a_files_stages_run_in_the_child_that_ran_its_first(tree: Tree, tmp_path: Path) -> None:
    """Two workers, three stages: most files run all three in one child (taken at
    random, one file in four would; a worker that idles takes a file meant for
    the other, so not every one does)."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "pids.py").write_text(PIDS_PY)
    stages = "".join(f'    - name: s{n}\n      python: "pids:run"\n' for n in range(3))
    tree.write_config(
        f"- name: p\n  match: '*'\n  stages:\n{stages}",
        workers=2,
        pipelines_dir=str(pipelines),
    )
    names = [f"f{n:03d}.dat" for n in range(120)]
    for name in names:
        (tree.incoming / name).write_bytes(name.encode())
    with stepped(tree) as s:
        s.until(lambda: len(s.find("file.archived")) == len(names), timeout=120)
    rows = tree.query("SELECT metadata FROM items")
    pids = [json.loads(metadata)["pids"] for (metadata,) in rows]
    assert len(pids) == len(names) and all(len(p) == 3 for p in pids), pids
    assert len({pid for p in pids for pid in p}) == 2, "both workers ran stages"
    together = sum(1 for p in pids if len(set(p)) == 1)
    print(f"{together} of {len(names)} files ran their three stages in one child")
    assert together >= 0.6 * len(names), f"{together} of {len(names)} in one child"


@pytest.fixture
def queues() -> JobQueues[str]:
    return JobQueues(2)


def test_a_worker_takes_its_own_then_any_then_anothers(queues: JobQueues[str]) -> None:
    queues.put("for-1", prefer=1)
    queues.put("any")
    queues.put("for-0", prefer=0)
    queues.put("gone-worker", prefer=7)  # no such worker: anyone's
    mine = queues.fds(0, shared=True, others=True)
    assert [queues.take(mine) for _ in range(5)] == [
        (True, "for-0"),
        (True, "any"),
        (True, "gone-worker"),
        (True, "for-1"),
        (False, None),
    ]


def test_a_busy_worker_takes_only_its_own_when_another_is_idle(queues: JobQueues[str]) -> None:
    queues.put("any")
    queues.put("for-1", prefer=1)
    own_only = queues.fds(0, shared=False)
    assert queues.take(own_only) == (False, None)
    assert queues.take(queues.fds(1, shared=False)) == (True, "for-1")
    assert queues.take(queues.fds(None, shared=True)) == (True, "any")


def test_a_job_is_taken_once_by_one_of_two_threads(queues: JobQueues[str]) -> None:
    """Whoever reads a job's byte takes the job: never two takers of one."""
    queues.put("only", prefer=0)
    fds = queues.fds(0, shared=True, others=True)
    first, second = queues.take(fds), queues.take(queues.fds(1, shared=True, others=True))
    assert [first, second] == [(True, "only"), (False, None)]
    assert all(os.get_blocking(fd) is False for fd in fds)


def test_withdrawn_jobs_leave_one_for_each_byte_already_won(queues: JobQueues[str]) -> None:
    """A paused pipeline's queued jobs are taken out (``withdraw``); a thread that had
    won a byte and waits for the lock still finds a job (one of those if nothing
    else is left: its worker hands it back), and the bytes left match the jobs left."""
    (shared,) = queues.fds(None, shared=True)
    for others, withdrawn, winner_takes in [
        (["other"], ["paused-1", "paused-2"], "other"),
        ([], ["paused-2"], "paused-1"),  # nothing else left: one is put back for it
    ]:
        queues.put_all([(job, None) for job in ["paused-1", *others, "paused-2"]])
        assert os.read(shared, 1) == b"j"  # a thread won a byte, and waits for the lock
        assert queues.withdraw(lambda job: job.startswith("paused")) == withdrawn
        with queues._lock:  # the winner takes its job
            assert queues._queues[0].popleft() == winner_takes
        assert queues.take([shared]) == (False, None)  # no byte without its job, nor back
