"""Fairness between pipelines, stepped in-process: a pipeline's backlog never holds
back another's files, ``concurrency`` caps a pipeline's running stages, and
``priority`` shares the workers without starving anyone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dropline.config import load_config
from dropline.loop.ready import ReadyQueues
from dropline.pipeline import Routes
from dropline.workers import COMMANDS_AHEAD

from ..harness import Tree
from ..test_stages import pipeline_yaml, sh_stage
from .stepper import Stepper, stepped

# Runs until its file's gate exists: a stage as slow as the test wants.
GATED = 'while [ ! -e "$1/$2" ]; do sleep 0.02; done'
PASSTHROUGH = '- name: pass\n  match: "*.txt"\n  stages: []\n'


def gated(gates: Path, name: str = "slow", match: str = "*.csv", **keys: int) -> str:
    text = pipeline_yaml([sh_stage("wait", GATED, str(gates), "{name}")], name=name, match=match)
    return text + "".join(f"  {key}: {value}\n" for key, value in keys.items())


def quick(name: str = "quick", match: str = "*.dat") -> str:
    return pipeline_yaml([sh_stage("check", "exit 0")], name=name, match=match)


def running_of(s: Stepper, pipeline: str) -> int:
    scheduler = s.daemon.scheduler
    return sum(1 for i in scheduler.running if scheduler.items[i].pipeline == pipeline)


def archived(s: Stepper, *names: str) -> bool:
    return all(s.find("file.archived", file=name.encode()) for name in names)


def drop(tree: Tree, *names: str) -> None:
    for name in names:
        (tree.incoming / f".{name}.tmp").write_bytes(name.encode())
        (tree.incoming / f".{name}.tmp").rename(tree.incoming / name)


def test_a_full_pipeline_does_not_keep_another_pipelines_file_from_its_claim(
    tree: Tree, tmp_path: Path
) -> None:
    """With max_in_flight files of the slow pipeline in working/ and more waiting,
    a file of a pipeline with no stages is claimed and archived within a few passes."""
    gates = tmp_path / "gates"
    gates.mkdir()
    tree.write_config(gated(gates) + PASSTHROUGH, workers=2, max_in_flight=4)
    csvs = [f"f{n:02d}.csv" for n in range(20)]
    with stepped(tree) as s:
        drop(tree, *csvs)
        s.until(
            lambda: s.daemon.scheduler.in_flight.get("slow") == 4 and not s.daemon.transit.claiming
        )
        # (A claimed name whose inotify event comes late is parked too: its look finds nothing.)
        s.until(lambda: s.daemon.intake.parked.count >= 16)
        drop(tree, "x.txt")
        s.daemon.intake.notified(b"x.txt")  # as inotify tells of it (its own event may lag)
        before = s.passes
        s.until(lambda: bool(s.find("file.archived", file=b"x.txt")))
        assert s.passes - before <= 4, f"archived after {s.passes - before} passes"
        assert s.daemon.scheduler.in_flight["slow"] == 4, "the slow pipeline stays at its bound"
        for name in csvs:
            (gates / name).touch()
        s.until(lambda: len(s.find("file.archived")) == 21, timeout=60)
    assert set(tree.archived()) == {*csvs, "x.txt"}


def test_a_free_worker_goes_to_the_pipeline_whose_turn_it_is(tree: Tree, tmp_path: Path) -> None:
    """Both workers busy with a backlog of slow files: when one frees, a file of the
    other pipeline, dropped later, runs before the slow backlog's next file.  (Stages
    declared idempotent: false, which no worker is handed ahead of its turn.)"""
    gates = tmp_path / "gates"
    gates.mkdir()
    once = {"idempotent": False}
    slow = pipeline_yaml([sh_stage("wait", GATED, str(gates), "{name}", **once)], name="slow")
    tree.write_config(
        slow.replace('"*"', '"*.csv"')
        + pipeline_yaml([sh_stage("check", "exit 0", **once)], name="quick", match="*.dat"),
        workers=2,
    )
    csvs = [f"f{n:02d}.csv" for n in range(8)]
    with stepped(tree) as s:
        drop(tree, *csvs)
        s.until(lambda: len(s.find("stage.started")) == 2)
        drop(tree, "a.dat", "b.dat")
        s.until(lambda: s.daemon.scheduler.ready.waiting("quick") == 2)
        first = s.find("stage.started")[0]["file"]
        (gates / first.decode()).touch()
        s.until(lambda: len(s.find("stage.started")) == 3)
        assert s.find("stage.started")[2]["pipeline"] == "quick"
        s.until(lambda: archived(s, "a.dat"))
        # Then the turns alternate: the slow pipeline's next file, then b.dat.
        assert [e["pipeline"] for e in s.find("stage.started")] == ["slow", "slow", "quick", "slow"]
        for name in csvs:
            (gates / name).touch()
        s.until(lambda: len(s.find("file.archived")) == 10, timeout=60)


def test_concurrency_caps_a_pipelines_running_stages(tree: Tree, tmp_path: Path) -> None:
    """concurrency: 1 on the slow pipeline: never two of its files run at once, though
    workers are free; the other pipeline uses them meanwhile."""
    gates = tmp_path / "gates"
    gates.mkdir()
    tree.write_config(gated(gates, concurrency=1) + quick(), workers=3)
    csvs = [f"f{n:02d}.csv" for n in range(4)]
    most = 0
    with stepped(tree) as s:
        drop(tree, *csvs)
        s.until(lambda: len(s.find("stage.started")) == 1)
        drop(tree, "a.dat", "b.dat", "c.dat")
        s.until(lambda: archived(s, "a.dat", "b.dat", "c.dat"))
        for name in csvs:
            for _ in range(5):
                s.step()
                most = max(most, running_of(s, "slow"))
            (gates / name).touch()

        def all_done() -> bool:
            nonlocal most
            most = max(most, running_of(s, "slow"))
            return len(s.find("file.archived")) == 7

        s.until(all_done, timeout=60)
    assert most == 1
    assert len(s.find("stage.started", pipeline="slow")) == 4


def test_priority_shares_the_workers_in_its_ratio(tree: Tree) -> None:
    """One worker, 8 files each in a pipeline of priority 3 and one of priority 1, all
    claimed at once: the first gets three turns for each of the other's."""
    config = quick("high", "h*") + "  priority: 3\n" + quick("low", "l*")
    tree.write_config(config, workers=1, settle_time="0s")
    drop(tree, *(f"h{n}" for n in range(8)), *(f"l{n}" for n in range(8)))
    with stepped(tree) as s:
        s.until(lambda: len(s.find("file.archived")) == 16, timeout=60)
    order = "".join(e["pipeline"][0] for e in s.find("stage.started"))
    assert order == "hlhhhlhhhlhlllll", order


def test_a_low_priority_is_never_starved(tmp_path: Path) -> None:
    """Priority 100 against 1, with a thousand files of the first ready: the second's
    files get a worker at least once in every 102 turns, not after the backlog."""
    config = tmp_path / "dropline.yaml"
    config.write_text(
        "data_dir: d\nstate_db: s.db\nworkers: 1\npipelines:\n"
        "  - {name: big, match: 'b*', priority: 100}\n  - {name: small, match: 's*'}\n"
    )
    routes = Routes(load_config(config))
    ready = ReadyQueues()
    for n in range(1000):
        ready.push(f"b{n}", "big")
    for n in range(5):
        ready.push(f"s{n}", "small")
    turns: list[str] = []
    while (name := ready.next_turn(routes, {}, 1)) is not None:
        turns.append(ready.pop(name))
        ready.served(name, routes)
    small = [n for n, item in enumerate(turns) if item.startswith("s")]
    assert len(turns) == 1005 and len(small) == 5
    gaps = [b - a for a, b in zip([-1, *small], small, strict=False)]
    assert max(gaps) <= 102, gaps  # at most 101 turns of the other in between
    assert small[-1] < 600, "served along the backlog, not after it"


def test_a_pipeline_idle_for_long_gets_no_burst_of_saved_turns(tmp_path: Path) -> None:
    """A pipeline that had nothing to run does not come back with credit: it takes
    turns with the busy one from where that one is."""
    config = tmp_path / "dropline.yaml"
    config.write_text(
        "data_dir: d\nstate_db: s.db\npipelines:\n"
        "  - {name: busy, match: 'b*'}\n  - {name: back, match: 'k*'}\n"
    )
    routes = Routes(load_config(config))
    ready = ReadyQueues()
    for n in range(100):
        ready.push(f"b{n}", "busy")
    for _ in range(50):
        name = ready.next_turn(routes, {}, 4)
        assert name == "busy"
        ready.pop(name)
        ready.served(name, routes)
    for n in range(10):
        ready.push(f"k{n}", "back")
    turns = []
    for _ in range(6):
        name = ready.next_turn(routes, {}, 4)
        assert name is not None
        ready.pop(name)
        ready.served(name, routes)
        turns.append(name)
    assert turns.count("back") == 3, turns


def test_the_concurrency_of_a_pipeline_holds_in_its_turns(tmp_path: Path) -> None:
    """A pipeline at its concurrency gets no turn however far behind its share it is."""
    config = tmp_path / "dropline.yaml"
    config.write_text(
        "data_dir: d\nstate_db: s.db\nworkers: 4\npipelines:\n"
        "  - {name: capped, match: 'c*', concurrency: 2}\n  - {name: other, match: 'o*'}\n"
    )
    routes = Routes(load_config(config))
    ready = ReadyQueues()
    ready.push("c1", "capped")
    assert ready.next_turn(routes, {"capped": 2}, 4) is None
    assert ready.next_turn(routes, {"capped": 1}, 4) == "capped"
    ready.push("o1", "other")
    assert ready.next_turn(routes, {"capped": 2, "other": 3}, 4) == "other"
    assert ready.next_turn(routes, {"capped": 2, "other": 4}, 4) is None


GATED_PY = """
import os
import time


def wait(ctx):
    gate = os.path.join(os.environ["GATES"], ctx.name)
    while not os.path.exists(gate):
        time.sleep(0.02)
"""


def test_only_an_idempotent_python_stage_is_handed_to_a_worker_ahead(
    tree: Tree, tmp_path: Path, monkeypatch: Any
) -> None:
    """One worker: an idempotent Python stage has a second file handed ahead (its
    child is fed the next one); a stage declared idempotent: false never has more
    than the workers handed out, since a start recorded for a file that then
    waited in the pool would fail it as indeterminate after a crash."""
    gates = tmp_path / "gates"
    gates.mkdir()
    monkeypatch.setenv("GATES", str(gates))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "gated.py").write_text(GATED_PY)
    stage = '  stages:\n    - name: wait\n      python: "gated:wait"\n'
    config = (
        f'- name: again\n  match: "*.csv"\n{stage}'
        f'- name: once\n  match: "*.dat"\n{stage}      idempotent: false\n'
    )
    tree.write_config(config, workers=1, pipelines_dir=str(pipelines))
    with stepped(tree) as s:
        drop(tree, "a.csv", "b.csv", "c.csv")
        s.until(lambda: running_of(s, "again") == 2)
        for _ in range(20):
            s.step()
        assert running_of(s, "again") == 2, "more than one file ahead"
        for name in ("a.csv", "b.csv", "c.csv"):
            (gates / name).touch()
        s.until(lambda: archived(s, "a.csv", "b.csv", "c.csv"), timeout=60)
        _never_ahead(s, tree, gates, "a non-idempotent stage was handed out ahead")


def _never_ahead(s: Stepper, tree: Tree, gates: Path, what: str) -> None:
    """Two files for the pipeline "once" (idempotent: false, one worker): never
    more than one handed out at a time, then both released and archived."""
    drop(tree, "a.dat", "b.dat")
    s.until(lambda: running_of(s, "once") >= 1)
    most = running_of(s, "once")
    for _ in range(20):
        s.step()
        most = max(most, running_of(s, "once"))
    assert most == 1, what
    for name in ("a.dat", "b.dat"):
        (gates / name).touch()
    s.until(lambda: archived(s, "a.dat", "b.dat"), timeout=60)


def test_an_idempotent_command_is_handed_to_a_worker_ahead(tree: Tree, tmp_path: Path) -> None:
    """One worker: an idempotent command has more files handed ahead (the worker
    starts the next as soon as one exits, not a pass of the loop later), as many as
    COMMANDS_AHEAD; a command declared idempotent: false never has more than the
    workers handed out."""
    gates = tmp_path / "gates"
    gates.mkdir()
    again = gated(gates, name="again")
    once = pipeline_yaml(
        [sh_stage("wait", GATED, str(gates), "{name}", idempotent=False)], name="once"
    ).replace('"*"', '"*.dat"')
    tree.write_config(again + once, workers=1)
    with stepped(tree) as s:
        csvs = [f"{n}.csv" for n in range(COMMANDS_AHEAD + 2)]
        drop(tree, *csvs)
        s.until(lambda: running_of(s, "again") == COMMANDS_AHEAD)
        for _ in range(20):
            s.step()
        assert running_of(s, "again") == COMMANDS_AHEAD, "more files ahead than its room"
        for name in csvs:
            (gates / name).touch()
        s.until(lambda: archived(s, *csvs), timeout=60)
        _never_ahead(s, tree, gates, "a non-idempotent command was handed out ahead")
