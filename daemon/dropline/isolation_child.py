"""The worker process's own loop (``python -m dropline.isolation_child``): take the
next stage attempt from the pipe, run it, send how it ended.

Each stage is built once per child and kept (a Python stage imported, its
class instantiated; a builtin built from its raw options by
``build_builtin``, so what it holds, a database connection say, lives per
child).  A request is (the stage's key, how to build it or None when it
was sent before, the attempt); a result is (outcome, error, metadata, the
seconds the stage ran).  The child's first message, None, says it has
started.  Imports stay lazy: a child costs only what its stages need.  That
goes for logging too: structlog (and asyncio, which it imports) is about
9 MiB of each child's own memory, so it is imported and configured only when
a stage first uses ``ctx.log`` (``_StageLog``); the builtins run here never
log but postgres-load, once in a while.  See ``isolation.py`` for the
daemon's side.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .spool.ipc import Pipe

_OUTPUT_TAIL = 2000  # bytes of what the stage printed that join its error


class _Logging:
    """The child's log configuration, made at the first line a stage logs."""

    log_format = "auto"
    configured = False
    lock = threading.Lock()

    @classmethod
    def logger(cls, fields: dict[str, Any]) -> Any:
        from .log import configure, get_logger

        with cls.lock:
            if not cls.configured:
                configure(cls.log_format)
                cls.configured = True
        return get_logger(**fields)

    @classmethod
    def release(cls) -> None:
        """The journal entries of the attempt that ended, before its result."""
        if cls.configured:
            from .log import release_lines

            release_lines()


class _StageLog:
    """A stage's ``ctx.log``: structlog's bound logger, made at its first use."""

    __slots__ = ("_fields", "_logger")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            self._logger = _Logging.logger(self._fields)
        return getattr(self._logger, name)


def _build(spec: dict[str, Any]) -> Any:
    """The stage callable SPEC names; ConfigError if it cannot be built."""
    if spec["kind"] == "builtin":
        from .stages.builtin import BuildEnv, build_builtin

        file = spec["file"]
        return build_builtin(
            spec["builtin"],
            spec["options"],
            file=file,
            line=spec["line"],
            key=spec["key"],
            lines=spec["lines"],
            env=BuildEnv(Path(file).parent, spec["pipeline"]),
        ).func
    from .stages.python import load_python_stage

    return load_python_stage(
        spec["ref"],
        spec["options"],
        [Path(p) for p in spec["search"]],
        file="",
        line=0,
        key=spec["stage"],
    )


class _Stages:
    """The stages this child was sent, built at their first attempt and kept."""

    def __init__(self) -> None:
        self.builds: dict[str, dict[str, Any]] = {}  # how to build each, by its key
        self.loaded: dict[str, Any] = {}  # the ones built

    def func(self, key: str) -> Any:
        """The stage KEY's callable; ConfigError if it cannot be built (tried
        again at its next attempt, as a stage that failed to load is)."""
        func = self.loaded.get(key)
        if func is None:
            func = self.loaded[key] = _build(self.builds[key])
        return func


def _run(key: str, spec: dict[str, Any], stages: _Stages) -> tuple[str, str, dict[str, Any], float]:
    """One attempt: (outcome, error, metadata, the seconds the stage itself ran:
    its build, once per child, is not the stage's pace)."""
    from .errors import ConfigError
    from .stages import StageContext, call_stage

    try:
        func = stages.func(key)
    except ConfigError as exc:
        return "failed", exc.detail, {}, 0.0
    ctx = StageContext(
        item_id=spec["item_id"],
        path=Path(spec["path"]),
        name=spec["name"],
        pipeline=spec["pipeline"],
        stage=spec["stage"],
        attempt=spec["attempt"],
        metadata=spec["metadata"],
        log=_StageLog(
            item=spec["item_id"], file=spec["name"], pipeline=spec["pipeline"], stage=spec["stage"]
        ),
        timeout=spec["timeout"],
        scratch=Path(spec["scratch"]) if spec.get("scratch") else None,
    )
    began = time.monotonic()
    outcome, error, metadata = call_stage(func, ctx)
    return outcome, error, metadata, time.monotonic() - began


def main(requests: Pipe, results: Pipe, log_format: str) -> None:
    _Logging.log_format = log_format
    output = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
    os.dup2(output.fileno(), 1)  # print() and child programs write here, not to the journal
    stages = _Stages()
    try:
        results.send(None)  # started: what every stage needs is imported
    except OSError:
        return
    while True:
        try:
            key, build, spec = requests.recv()
        except (EOFError, OSError):
            return  # the daemon is gone (or closed us): end quietly
        if build is not None:
            stages.builds[key] = build
            stages.loaded.pop(key, None)
        limit = stages.builds[key]["memory_limit"]
        if limit is not None:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        sys.stdout.flush()
        if os.lseek(1, 0, os.SEEK_END):  # what the last stage printed: not this one's
            os.ftruncate(1, 0)
            os.lseek(1, 0, os.SEEK_SET)
        outcome, error, metadata, took = _run(key, spec, stages)
        if limit is not None:
            if error.startswith("MemoryError"):
                error += f" (over memory_limit: {limit} bytes)"
            with contextlib.suppress(ValueError, OSError):
                infinity = resource.RLIM_INFINITY
                resource.setrlimit(resource.RLIMIT_AS, (infinity, infinity))
        if outcome != "succeeded":
            sys.stdout.flush()
            size = os.lseek(1, 0, os.SEEK_END)
            if size:
                tail = os.pread(1, _OUTPUT_TAIL, max(0, size - _OUTPUT_TAIL))
                cut = f"[... {size - len(tail)} bytes omitted ...]" if size > len(tail) else ""
                error += f"\noutput: {cut}{tail.decode('utf-8', 'replace')}"
        _Logging.release()  # the stage's journal entries before its result
        try:
            results.send((outcome, error, metadata, took))
        except (OSError, ValueError, TypeError):
            return


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(Pipe(int(sys.argv[1])), Pipe(int(sys.argv[2])), sys.argv[3])
