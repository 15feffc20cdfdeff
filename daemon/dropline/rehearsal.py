"""A rehearsal: a file's stages run on a scratch copy, nothing moved, nothing recorded.

What ``dropline try`` runs.  The file is copied (never followed, never
opened unless it is a regular file the daemon would accept) into a
temporary folder of its own, and each stage of the pipeline runs on the
copy with ``StageContext.rehearsal`` set, in this process, once: the
builtins load inside a transaction that is rolled back and only describe a
publish or a webhook; a command or Python stage runs only if it says
``try: run`` (``StageConfig.try_mode``).  No state database is opened and
no folder of the daemon's is touched.  The outcome is what the daemon's
own rule (``lifecycle.decide``) makes of each attempt, as if it were the
last one allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .escaping import field_text
from .ids import new_item_id
from .lifecycle.decide import decide
from .pipeline import Pipeline, Stage
from .spool.entries import Refusal, classify
from .stages import FAILURE, StageContext, call_stage

# A Python stage cannot be killed: past its timeout and this grace it is
# abandoned (its thread left to die with the process), as the daemon does.
_ABANDON_GRACE = 5.0


class RefusedError(Exception):
    """The daemon would refuse the file (a symlink, a FIFO, a hard link ...)."""


@dataclass
class Copy:
    """The scratch copy of the file tried, in a folder of its own."""

    folder: Path
    path: Path
    size: int
    sha256: str


@dataclass
class StageRun:
    """One stage's rehearsal."""

    stage: str
    kind: str  # "builtin NAME", "command" or "python"
    part: str  # "stages" or "on_failure"
    mode: str  # try: run or skip
    outcome: str = "skipped"  # succeeded, failed, permanent, timeout, skipped
    error: str = ""
    seconds: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    retries: int = 0


@contextlib.contextmanager
def scratch_copy(source: Path, max_size: int) -> Iterator[Copy]:
    """SOURCE copied into a temporary folder, removed on the way out.

    Judged as the daemon judges an entry of incoming/ (``spool.entries``),
    by lstat, before it is opened: a symlink is never followed and a FIFO
    never opened (it would block).  The copy is read through the descriptor
    of the very inode judged.
    """
    st = os.lstat(source)
    judged = classify(os.fsencode(source.name), st, max_size)
    if isinstance(judged, Refusal):
        raise RefusedError(judged.reason)
    folder = Path(tempfile.mkdtemp(prefix="dropline-try-"))
    try:
        copy = folder / "file" / source.name
        copy.parent.mkdir()
        digest = hashlib.sha256()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(source, flags)
        with open(fd, "rb") as src, open(copy, "xb") as dst:
            opened = os.fstat(src.fileno())
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise RefusedError("it was replaced while it was being read")
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        yield Copy(folder, copy, copy.stat().st_size, digest.hexdigest())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Printed:
    text = ""


@contextlib.contextmanager
def _output_captured() -> Iterator[_Printed]:
    """Descriptors 1 and 2 (and Python's streams over them) into a temporary file for
    the block; what was written there is in the yielded ``text`` afterwards."""
    printed = _Printed()
    with tempfile.TemporaryFile() as capture:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield printed
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            capture.seek(0)
            printed.text = capture.read().decode("utf-8", "replace")


class _Notes:
    """What a stage logs through ``ctx.log``, kept as lines (a structlog logger's
    shape: ``ctx.log.info("event", key=value)``, ``bind``)."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def bind(self, **_: object) -> _Notes:
        return self

    def __getattr__(self, level: str) -> Any:
        def write(event: object = "", *args: object, **fields: object) -> None:
            text = str(event) % args if args else str(event)
            pairs = " ".join(f"{k}={field_text(v)}" for k, v in fields.items())
            self._lines.append(f"{level}: {text}" + (f" {pairs}" if pairs else ""))

        return write


def _kind(stage: Stage) -> str:
    config = stage.config
    return f"builtin {config.builtin}" if config.kind == "builtin" else config.kind


def run_pipeline(
    pipeline: Pipeline, copy: Copy, name: str
) -> tuple[list[StageRun], dict[str, Any]]:
    """Each stage of PIPELINE on COPY, then its on_failure stages if it failed.

    Returns the runs and the failure (``{"stage", "reason", "attempts",
    "retriable"}``), empty when the file would be archived.
    """
    item_id = new_item_id()
    metadata: dict[str, Any] = {}
    runs: list[StageRun] = []
    failure: dict[str, Any] = {}
    for stage in pipeline.stages:
        run = _run_stage(stage, "stages", copy, name, item_id, pipeline.name, metadata)
        runs.append(run)
        if run.outcome in ("succeeded", "skipped"):
            metadata.update(run.metadata)
            continue
        config = stage.config
        # As if this were its last attempt: the reason the file would fail with.
        verdict = decide(
            run.outcome,
            run.error,
            stage=stage.name,
            config=config,
            failures=config.retries,
            stopped=False,
            failing=False,
        )
        # A program that cannot start is not the file's doing: retried, or (with a
        # breaker) its pipeline holds; either way the file waits rather than fails.
        unavailable = run.outcome == "unavailable"
        retriable = unavailable or (run.outcome in ("failed", "timeout") and config.retries > 0)
        failure = {
            "stage": stage.name,
            "reason": verdict.reason,
            "attempts": verdict.failures,
            "retriable": retriable,
        }
        break
    if failure:
        metadata[FAILURE] = {k: failure[k] for k in ("stage", "reason", "attempts")}
        for stage in pipeline.on_failure:
            run = _run_stage(stage, "on_failure", copy, name, item_id, pipeline.name, metadata)
            runs.append(run)
    return runs, failure


def _run_stage(
    stage: Stage,
    part: str,
    copy: Copy,
    name: str,
    item_id: str,
    pipeline: str,
    metadata: dict[str, Any],
) -> StageRun:
    config = stage.config
    run = StageRun(stage.name, _kind(stage), part, config.try_mode, retries=config.retries)
    if run.mode == "skip":
        return run
    cancel = threading.Event()
    ctx = StageContext(
        item_id=item_id,
        path=copy.path,
        name=name,
        pipeline=pipeline,
        stage=stage.name,
        attempt=1,
        metadata=dict(metadata),
        log=_Notes(run.output),
        timeout=config.timeout,
        cancel=cancel,
        scratch=copy.folder / "scratch",
        rehearsal=True,
    )
    ended: list[tuple[str, str, dict[str, Any]]] = []

    def attempt() -> None:
        ended.append(call_stage(stage.func, ctx))

    started = time.monotonic()
    worker = threading.Thread(target=attempt, name=f"try-{stage.name}", daemon=True)
    try:
        # What a Python stage prints is its output too, and what a program it starts
        # prints: never on try's own output (its --json).  A command's is its own.
        with _output_captured() as printed:
            worker.start()
            worker.join(config.timeout + _ABANDON_GRACE)
    finally:
        cancel.set()  # Ctrl-C, or past its time: a command's process group is killed
    run.seconds = round(time.monotonic() - started, 6)
    run.output[:0] = [line for line in printed.text.splitlines() if line.strip()]
    if not ended:
        run.outcome = "timeout"
        run.error = f"timed out after {config.timeout:g} s (abandoned)"
        return run
    run.outcome, run.error, run.metadata = ended[0]
    said = run.metadata.pop("output", None) if config.kind == "command" else None
    if isinstance(said, str):
        run.output.extend(said.splitlines())
    return run


__all__ = ["Copy", "RefusedError", "StageRun", "run_pipeline", "scratch_copy"]
