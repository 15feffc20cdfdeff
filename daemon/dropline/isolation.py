"""Python stages in worker processes: killable at their timeout, bounded in memory.

A Python stage run in a thread can neither be killed when it hangs nor kept
from eating the daemon's memory.  So by default (``isolation: process``)
each worker thread drives one child process of its own (a fresh
interpreter, never a fork of the threaded daemon with its open database)
that imports the operator's stage and runs it, one file at a time.  At the
timeout, or when the daemon stops, the child is killed and a new one
started for the next file; an address-space limit
(``memory_limit``) turns a runaway allocation into a MemoryError in the
child, a failed attempt, instead of an OOM kill of the daemon.  What the
stage prints goes to a temporary file whose tail joins the error: never
held in memory, never in the journal unbounded.

The child never touches the spool or the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .spool.ipc import Pipe, start_helper

_POLL = 0.05  # seconds between checks of the timeout and the stop request
_OUTPUT_TAIL = 2000  # bytes of what the stage printed that join its error


class StageProcess:
    """One child process running Python stages for one worker thread.

    The child is ``python -m dropline.isolation`` on two pipes (``spool/ipc.py``).
    """

    def __init__(self, log_format: str) -> None:
        self._log_format = log_format
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: Pipe | None = None
        self._results: Pipe | None = None

    def _start(self) -> tuple[Pipe, Pipe]:
        self._proc, self._requests, self._results = start_helper(
            "dropline.isolation", [self._log_format]
        )
        return self._requests, self._results

    def run(
        self, spec: dict[str, Any], timeout: float, cancel: threading.Event | None
    ) -> tuple[str, str, dict[str, Any]]:
        """Run one stage attempt; returns (outcome, error, metadata)."""
        if self._requests is not None and self._results is not None and self._alive():
            requests, results = self._requests, self._results
        else:
            self.close()
            requests, results = self._start()
        with contextlib.suppress(OSError):  # if it died, the loop below says so
            requests.send(spec)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if results.poll(_POLL):
                    result: tuple[str, str, dict[str, Any]] = results.recv()
                    return result
            except (EOFError, OSError):
                pass
            if not self._alive():
                code = self._proc.returncode if self._proc is not None else None
                self.close()
                how = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
                return "failed", f"the stage's worker process died ({how})", {}
            if cancel is not None and cancel.is_set():
                self.close()
                return "failed", "cancelled: dropline is stopping", {}
            if time.monotonic() > deadline:
                self.close()
                return "timeout", f"timed out after {timeout:g} s (worker process killed)", {}

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Kill the child (it may be stuck in the stage) and forget it."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None
        for pipe in (self._requests, self._results):
            if pipe is not None:
                pipe.close()
        self._requests = self._results = None


def _child_main(requests: Pipe, results: Pipe, log_format: str) -> None:
    """The child's loop: receive a stage attempt, run it, send how it ended."""
    from .errors import ConfigError
    from .log import configure, get_logger, release_lines
    from .stages import StageContext, call_stage
    from .stages.python import load_python_stage

    configure(log_format)
    output = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
    os.dup2(output.fileno(), 1)  # print() and child programs write here, not to the journal
    loaded: dict[str, Any] = {}
    while True:
        try:
            spec: dict[str, Any] = requests.recv()
        except (EOFError, OSError):
            return  # the daemon is gone (or closed us): end quietly
        limit = spec["memory_limit"]
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        sys.stdout.flush()
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        key = spec["ref"] + json.dumps(spec["options"], sort_keys=True, default=str)
        metadata: dict[str, Any] = {}
        func = loaded.get(key)
        if func is None:
            try:
                func = load_python_stage(
                    spec["ref"],
                    spec["options"],
                    [Path(p) for p in spec["search"]],
                    file="",
                    line=0,
                    key=spec["stage"],
                )
            except ConfigError as exc:
                func = None
                outcome, error = "failed", exc.detail
            else:
                loaded[key] = func
        if func is not None:
            ctx = StageContext(
                item_id=spec["item_id"],
                path=Path(spec["path"]),
                name=spec["name"],
                pipeline=spec["pipeline"],
                stage=spec["stage"],
                attempt=spec["attempt"],
                metadata=spec["metadata"],
                log=get_logger(
                    item=spec["item_id"],
                    file=spec["name"],
                    pipeline=spec["pipeline"],
                    stage=spec["stage"],
                ),
                timeout=spec["timeout"],
                scratch=Path(spec["scratch"]) if spec.get("scratch") else None,
            )
            outcome, error, metadata = call_stage(func, ctx)
            if error.startswith("MemoryError"):
                error += f" (over memory_limit: {limit} bytes)"
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        if outcome != "succeeded":
            sys.stdout.flush()
            size = os.lseek(1, 0, os.SEEK_END)
            if size:
                tail = os.pread(1, _OUTPUT_TAIL, max(0, size - _OUTPUT_TAIL))
                cut = f"[... {size - len(tail)} bytes omitted ...]" if size > len(tail) else ""
                error += f"\noutput: {cut}{tail.decode('utf-8', 'replace')}"
        release_lines()  # the stage's journal entries before its result
        try:
            results.send((outcome, error, metadata))
        except (OSError, ValueError, TypeError):
            return


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        _child_main(Pipe(int(sys.argv[1])), Pipe(int(sys.argv[2])), sys.argv[3])
