"""How many attempts the loop hands out at once (``loop/pacing.py``): two per
worker for a stage not yet measured or measured slow, more for one measured
quick, a few per worker for a command, one per worker for a thread stage or
one declared idempotent: false."""

from __future__ import annotations

from pathlib import Path

from dropline.config import load_config
from dropline.isolation import AHEAD, MOST_AHEAD
from dropline.loop.pacing import HORIZON, Pacing
from dropline.pipeline import Routes, Stage
from dropline.workers import COMMANDS_AHEAD

from ..harness import Tree
from ..test_stages import attempts_of
from .stepper import stepped

QUICK_PY = "def run(ctx):\n    return {'n': 1}\n"


def _stages(tree: Tree, tmp_path: Path) -> dict[str, Stage]:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir(exist_ok=True)
    (pipelines / "quick.py").write_text(QUICK_PY)
    tree.write_config(
        "- name: p\n  match: '*'\n  stages:\n"
        '    - name: py\n      python: "quick:run"\n'
        '    - name: once\n      python: "quick:run"\n      idempotent: false\n'
        '    - name: cmd\n      command: ["/bin/true"]\n'
        '    - name: thread\n      python: "quick:run"\n      isolation: thread\n',
        workers=3,
        pipelines_dir=str(pipelines),
    )
    (pipeline,) = Routes(load_config(tree.config)).pipelines
    return {stage.name: stage for stage in pipeline.stages}


def test_a_stage_gets_more_ahead_only_once_measured_quick(tree: Tree, tmp_path: Path) -> None:
    stages = _stages(tree, tmp_path)
    pacing = Pacing(3)
    py = stages["py"]
    assert pacing.ahead("p", py) == AHEAD, "not measured yet: the least"
    pacing.ran("p", "py", 0.05)
    assert pacing.ahead("p", py) == AHEAD, "slow: the least"
    for _ in range(40):
        pacing.ran("p", "py", HORIZON / 10)
    assert pacing.ahead("p", py) in range(8, 11), "about as many as it runs in HORIZON"
    for _ in range(40):
        pacing.ran("p", "py", 0.000_01)
    assert pacing.ahead("p", py) == MOST_AHEAD
    assert pacing.limit("p", py) == 3 * MOST_AHEAD
    pacing.ran("p", "py", 0.0)  # never started: nothing learnt
    assert pacing.ahead("p", py) == MOST_AHEAD
    for _ in range(20):
        pacing.ran("p", "py", 1.0)
    assert pacing.ahead("p", py) == AHEAD, "turned slow: paced down again"
    assert pacing.ahead("q", py) == AHEAD, "measured per pipeline and stage"


def test_never_ahead_a_thread_or_a_non_idempotent_stage(tree: Tree, tmp_path: Path) -> None:
    stages = _stages(tree, tmp_path)
    pacing = Pacing(3)
    for name in ("once", "thread"):
        pacing.ran("p", name, 0.000_01)
        assert pacing.ahead("p", stages[name]) == 1, name
        assert pacing.limit("p", stages[name]) == 3, name


def test_an_idempotent_command_has_a_few_at_hand_however_quick(tree: Tree, tmp_path: Path) -> None:
    """A worker thread running commands has COMMANDS_AHEAD at hand, never paced
    further (a command's time is mostly its program's start, not measured)."""
    stages = _stages(tree, tmp_path)
    pacing = Pacing(3)
    assert pacing.ahead("p", stages["cmd"]) == COMMANDS_AHEAD
    pacing.ran("p", "cmd", 0.000_01)
    assert pacing.ahead("p", stages["cmd"]) == COMMANDS_AHEAD
    assert pacing.limit("p", stages["cmd"]) == 3 * COMMANDS_AHEAD


def test_a_quick_python_stage_has_many_files_handed_out_and_each_runs_once(
    tree: Tree, tmp_path: Path
) -> None:
    """One worker: once its first results are in, far more than two files of a
    quick stage are handed out at once; each file still runs it once and is
    archived."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "quick.py").write_text(QUICK_PY)
    tree.write_config(
        "- name: p\n  match: '*'\n  stages:\n    - name: py\n      python: \"quick:run\"\n",
        workers=1,
        pipelines_dir=str(pipelines),
    )
    names = [f"f{n:03d}.dat" for n in range(200)]
    for name in names:
        (tree.incoming / name).write_bytes(name.encode())
    with stepped(tree) as s:
        most = 0

        def done() -> bool:
            nonlocal most
            most = max(most, len(s.daemon.scheduler.running))
            return len(s.find("file.archived")) == len(names)

        s.until(done, timeout=60)
    assert most > AHEAD, f"at most {most} handed out at once"
    for name in names:
        assert [a[1] for a in attempts_of(tree, name)] == ["succeeded"], name
