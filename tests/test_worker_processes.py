"""Stages in the workers' child processes: fed ahead, each attempt with its own
timeout, a dead or stuck child replaced without losing the attempts queued in
it, builtins run there with the reasons they always gave, and two workers
really running in two processes.  Real pools, real children, real files."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

from dropline.config import load_config
from dropline.pipeline import Routes, Stage
from dropline.stages import StageContext, call_stage
from dropline.workers import StageJob, StageResult, WorkerPool

from .harness import Tree, wait_until

STAGES = """
import os
import sys
import time


def sleepy(ctx):
    started = time.time()
    time.sleep(float(ctx.name.split("_")[1]))
    return {"pid": os.getpid(), "started": started, "ended": time.time()}


def gate(ctx):
    started = time.time()
    while not os.path.exists(ctx.path) and time.time() < started + 30:
        time.sleep(0.01)
    return {"pid": os.getpid(), "opened": os.path.exists(ctx.path)}


def logs(ctx):
    if ctx.name.startswith("say"):
        ctx.log.bind(words="hello").info("stage.says")
    return {"structlog": "structlog" in sys.modules}


def burn(ctx):
    started = time.time()
    while time.time() < started + 0.5:
        pass
    return {"pid": os.getpid(), "started": started, "ended": time.time()}
"""

CSV_STAGE = """
    - name: check
      builtin: validate-csv
      retries: 0
      with:
        columns:
          - {name: id, type: integer}
          - {name: day, type: date}
"""


def _stages(tmp_path: Path, stages: str) -> tuple[Stage, ...]:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir(exist_ok=True)
    (pipelines / "childstages.py").write_text(STAGES)
    config = tmp_path / "dropline.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nstate_db: {tmp_path / 'state.db'}\n"
        f"pipelines_dir: {pipelines}\npipelines:\n  - name: p\n    match: '*'\n"
        f"    stages:{stages}"
    )
    return Routes(load_config(config)).pipelines[0].stages


def _python_stage(tmp_path: Path, func: str, timeout: str = "30s") -> Stage:
    stage = f'\n    - name: s\n      python: "childstages:{func}"\n      timeout: {timeout}\n'
    return _stages(tmp_path, stage)[0]


def _job(stage: Stage, token: int, name: str, path: Path) -> StageJob:
    ctx = StageContext(
        item_id=f"item{token}",
        path=path,
        name=name,
        pipeline="p",
        stage=stage.name,
        attempt=1,
        timeout=stage.config.timeout,
        cancel=threading.Event(),
    )
    return StageJob(f"item{token}", token, stage, ctx)


def _run(pool_size: int, jobs: list[StageJob]) -> dict[str, StageResult]:
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = WorkerPool(pool_size, out, "json")
    try:
        for job in jobs:
            pool.submit(job)
        results: dict[str, StageResult] = {}
        while len(results) < len(jobs):
            result = out.get(timeout=60)
            results[result.item_id] = result
        return results
    finally:
        pool.close()


def test_one_attempt_times_out_the_others_in_its_child_end_normally(tmp_path: Path) -> None:
    """In a child fed several files, only the stuck one times out; the child is replaced."""
    stage = _python_stage(tmp_path, "sleepy", timeout="1s")
    naps = ["0", "0", "30", "0", "0"]  # the third sleeps past its timeout
    jobs = [_job(stage, i, f"f_{nap}_{i}", tmp_path) for i, nap in enumerate(naps)]
    results = _run(1, jobs)
    outcomes = {r.item_id: r.outcome for r in results.values()}
    assert outcomes == {f"item{i}": "timeout" if i == 2 else "succeeded" for i in range(5)}
    assert "timed out after 1 s (worker process killed)" in results["item2"].error
    before = {results[f"item{i}"].metadata["pid"] for i in (0, 1)}
    after = {results[f"item{i}"].metadata["pid"] for i in (3, 4)}
    assert len(before) == 1 and len(after) == 1 and before != after, "the child was replaced"


def test_a_child_killed_mid_batch_fails_its_running_attempt_only(tmp_path: Path) -> None:
    """The attempt running when its child is killed fails as "worker process died";
    those queued behind it run in the new child: none is lost."""
    stage = _python_stage(tmp_path, "sleepy")
    first = _job(stage, 0, "f_0_0", tmp_path)
    stuck = _job(stage, 1, "f_20_1", tmp_path)
    queued = [_job(stage, i, f"f_0_{i}", tmp_path) for i in (2, 3)]
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = WorkerPool(1, out, "json")
    try:
        for job in (first, stuck, *queued):
            pool.submit(job)
        done = out.get(timeout=30)
        assert done.outcome == "succeeded", done
        child = int(done.metadata["pid"])
        wait_until(lambda: _sleeping(child), timeout=10, what="the child in the long attempt")
        os.kill(child, 9)
        results = {r.item_id: r for r in (out.get(timeout=30) for _ in range(3))}
    finally:
        pool.close()
    assert results["item1"].outcome == "failed"
    assert "the stage's worker process died (killed by signal 9)" in results["item1"].error
    for item in ("item2", "item3"):
        assert results[item].outcome == "succeeded", results[item]
        assert results[item].metadata["pid"] != child


def test_a_job_submitted_while_the_child_runs_is_sent_to_it_ahead(tmp_path: Path) -> None:
    """The worker waiting on its child watches the queue too: a job submitted while
    the child runs one is in the child's pipe before that one ends."""
    gate = tmp_path / "gate"
    running = _job(_python_stage(tmp_path, "gate"), 0, "gate", gate)
    nxt = _job(_python_stage(tmp_path, "sleepy"), 1, "f_0_1", tmp_path)
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = WorkerPool(1, out, "json")
    try:
        pool.submit(running)
        wait_until(running.begun.is_set, timeout=10, what="the first attempt sent")
        pool.submit(nxt)
        wait_until(nxt.begun.is_set, timeout=10, what="the second sent while the first runs")
        assert out.empty(), "the first is still running"
        gate.touch()
        results = {r.item_id: r for r in (out.get(timeout=30) for _ in range(2))}
    finally:
        pool.close()
    assert results["item0"].metadata["opened"] is True
    assert results["item1"].outcome == "succeeded"
    assert results["item0"].metadata["pid"] == results["item1"].metadata["pid"]


def _sleeping(pid: int) -> bool:
    return Path(f"/proc/{pid}/wchan").read_text() not in ("0", "")


def test_two_workers_run_a_cpu_stage_in_two_processes_at_once(tmp_path: Path) -> None:
    """Two attempts of a CPU-bound stage overlap in time, in two processes other than ours."""
    stage = _python_stage(tmp_path, "burn")
    results = _run(2, [_job(stage, i, f"f_{i}", tmp_path) for i in range(2)])
    a, b = (dict(r.metadata) for r in results.values())
    assert a["pid"] != b["pid"] and os.getpid() not in (a["pid"], b["pid"])
    assert a["started"] < b["ended"] and b["started"] < a["ended"], "they overlapped"


def test_a_builtin_runs_in_the_child_with_its_usual_reason(tmp_path: Path) -> None:
    """validate-csv runs in the worker's child; its failure reads as it does in-process."""
    (stage,) = _stages(tmp_path, CSV_STAGE)
    assert stage.runs_in == "process"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,day\n1,2024-01-01\nx,2024-13-40\n")
    job = _job(stage, 0, "bad.csv", bad)
    in_thread = call_stage(stage.func, job.ctx)
    result = _run(1, [job])["item0"]
    assert result.outcome == in_thread[0] == "permanent"
    assert result.error == in_thread[1] and "line 3" in result.error


def test_a_builtin_failure_in_the_child_reaches_failed(tree: Tree, start_daemon: Any) -> None:
    """Through the daemon: the builtin's reason is the file's error in failed/."""
    tree.write_config(f"- name: orders\n  match: '*.csv'\n  stages:{CSV_STAGE}")
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "bad.csv").write_text("id,day\n1,2024-01-01\nx,2024-13-40\n")
    wait_until(lambda: (tree.failed / "bad.csv").exists(), timeout=20, what="bad.csv failed")
    error = json.loads((tree.failed / "bad.csv.error.json").read_text())["error"]
    assert "line 3" in error and "integer" in error
    assert daemon.stop() == 0


def test_the_child_imports_logging_only_when_a_stage_logs(tmp_path: Path) -> None:
    """A child whose stages never log never imports structlog (its memory); the
    first line a stage logs configures it there."""
    stage = _python_stage(tmp_path, "logs")
    jobs = [_job(stage, i, name, tmp_path) for i, name in enumerate(["quiet", "say", "after"])]
    results = _run(1, jobs)
    loaded = {r.item_id: r.metadata["structlog"] for r in results.values()}
    assert loaded == {"item0": False, "item1": True, "item2": True}


def test_a_stage_logs_from_the_child_with_its_files_fields(tree: Tree, start_daemon: Any) -> None:
    """A stage in the worker process logs through ctx.log: the line is the
    daemon's format, bound to the file, between its stage's start and end."""
    folder = tree.root / "pipelines"
    folder.mkdir()
    (folder / "childstages.py").write_text(STAGES)
    tree.write_config(
        '- name: talk\n  match: "*.txt"\n  stages:\n    - name: say\n'
        '      python: "childstages:logs"\n',
        pipelines_dir=str(folder),
    )
    daemon = start_daemon()
    daemon.wait_event("daemon.ready")
    (tree.incoming / "say.txt").write_bytes(b"hi\n")
    daemon.wait_event("file.archived", file="say.txt")
    assert daemon.stop() == 0
    mine = [e for e in daemon.events() if e.get("file") == "say.txt"]
    says = [e for e in mine if e["event"] == "stage.says"]
    assert len(says) == 1 and says[0]["words"] == "hello", mine
    assert says[0]["pipeline"] == "talk" and says[0]["stage"] == "say" and says[0]["item"]
    order = [
        e["event"] for e in mine if e["event"] in ("stage.started", "stage.says", "stage.succeeded")
    ]
    assert order == ["stage.started", "stage.says", "stage.succeeded"], mine


def _children(name: str) -> set[int]:
    """Our child processes running python -m NAME."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
    return found


def test_a_warm_pool_has_its_children_started_before_the_first_file(tmp_path: Path) -> None:
    """warm: each thread's child is started with the pool, and the first
    attempts run in those children, not in new ones."""
    stage = _python_stage(tmp_path, "sleepy")
    before = _children("dropline.isolation_child")
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = WorkerPool(2, out, "json", warm=True)
    try:
        assert pool.wait_warm(30), "the children started"
        warm = _children("dropline.isolation_child") - before
        assert len(warm) == 2, "one child per thread, started before any job"
        for i in range(4):
            pool.submit(_job(stage, i, f"f_0_{i}", tmp_path))
        results = [out.get(timeout=30) for _ in range(4)]
    finally:
        pool.close()
    assert all(r.outcome == "succeeded" for r in results), results
    assert {r.metadata["pid"] for r in results} <= warm


def test_a_stage_is_built_once_per_child_however_many_files(tmp_path: Path) -> None:
    """The stage's options go to a child with its first attempt only; it is
    built once there and runs every file after."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "counted.py").write_text(
        "import os\nBUILT = []\n\n\nclass Stage:\n    def __init__(self, options):\n"
        "        BUILT.append(options)\n\n    def __call__(self, ctx):\n"
        "        return {'built': len(BUILT), 'pid': os.getpid(), 'seen': BUILT[-1]}\n"
    )
    config = tmp_path / "dropline.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nstate_db: {tmp_path / 'state.db'}\n"
        f"pipelines_dir: {pipelines}\npipelines:\n  - name: p\n    match: '*'\n"
        "    stages:\n      - name: s\n        python: counted:Stage\n"
        "        with: {colour: blue}\n"
    )
    (stage,) = Routes(load_config(config)).pipelines[0].stages
    results = _run(1, [_job(stage, i, f"f_{i}", tmp_path) for i in range(6)])
    assert {r.outcome for r in results.values()} == {"succeeded"}
    assert len({r.metadata["pid"] for r in results.values()}) == 1
    assert [r.metadata["built"] for r in results.values()] == [1] * 6
    assert all(r.metadata["seen"] == {"colour": "blue"} for r in results.values())


def test_at_a_stop_the_jobs_not_begun_come_back_unbegun(tmp_path: Path) -> None:
    """Once the pool is told dropline is stopping, the attempt running ends
    normally and the jobs still queued come back as never begun (they run
    after the restart)."""
    stage = _python_stage(tmp_path, "sleepy")
    running = _job(stage, 0, "f_1_0", tmp_path)
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pool = WorkerPool(1, out, "json")
    try:
        pool.submit(running)
        wait_until(running.begun.is_set, timeout=10, what="the first job begun")
        pool.stop_starting()
        for i in range(1, 6):
            pool.submit(_job(stage, i, f"f_0_{i}", tmp_path))
        results = {r.item_id: r for r in (out.get(timeout=30) for _ in range(6))}
    finally:
        pool.close()
    assert results["item0"].outcome == "succeeded" and results["item0"].began
    for i in range(1, 6):
        assert not results[f"item{i}"].began, results[f"item{i}"]
        assert results[f"item{i}"].error == "cancelled: dropline is stopping"
