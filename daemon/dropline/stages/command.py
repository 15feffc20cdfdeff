"""External command stages: an argv list, never a shell string.

Placeholders in any argument: ``{path}`` (the file in working/), ``{name}``
(its original name), ``{item_id}``, ``{pipeline}``, ``{stage}``; replaced as
bytes, so a name is passed verbatim whatever it holds.  The environment adds
DROPLINE_ITEM_ID, DROPLINE_PATH, DROPLINE_NAME, DROPLINE_PIPELINE,
DROPLINE_STAGE and DROPLINE_ATTEMPT to the daemon's own (as it was when the
stage was built, at start or reload).  Exit 0 succeeds; 65 (EX_DATAERR) means
the file is bad and fails at once; anything else is retried.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from ..config import PLACEHOLDERS
from ..errors import PermanentError, RetriableError, UnavailableError
from ..process import describe, run_command
from . import StageContext, StageFunc, StageTimeout

EX_DATAERR = 65
OUTPUT_CAP = 64 * 1024
_PLACEHOLDER = re.compile(rb"\{(%s)\}" % "|".join(PLACEHOLDERS).encode())


def substitutions(ctx: StageContext) -> dict[str, bytes]:
    """What each placeholder stands for; its keys are config.PLACEHOLDERS, no more, no less."""
    return {
        "path": os.fsencode(ctx.path),
        "name": os.fsencode(ctx.name),
        "item_id": ctx.item_id.encode(),
        "pipeline": ctx.pipeline.encode(),
        "stage": ctx.stage.encode(),
    }


def build_command_stage(argv: tuple[str, ...]) -> StageFunc:
    """The stage function running ARGV for each file."""
    template = [arg.encode() for arg in argv]
    # The daemon's environment, read once: it does not change while the daemon
    # runs, and copying os.environb (a decode and an encode a variable) cost
    # more of the interpreter lock a file than the rest of the stage's Python.
    inherited = dict(os.environb)

    def stage(ctx: StageContext) -> Mapping[str, Any] | None:
        subs = substitutions(ctx)
        path, name = subs["path"], subs["name"]
        # One pass over the template: a value is never searched again, so a file
        # named "a{stage}.csv" reaches the program as that name.
        args = [_PLACEHOLDER.sub(lambda m: subs[m.group(1).decode()], arg) for arg in template]
        env = {
            **inherited,
            b"DROPLINE_ITEM_ID": ctx.item_id.encode(),
            b"DROPLINE_PATH": path,
            b"DROPLINE_NAME": name,
            b"DROPLINE_PIPELINE": ctx.pipeline.encode(),
            b"DROPLINE_STAGE": ctx.stage.encode(),
            b"DROPLINE_ATTEMPT": str(ctx.attempt).encode(),
        }
        if ctx.rehearsal:
            env[b"DROPLINE_TRY"] = b"1"  # under `dropline try`: a scratch copy, nothing counts
        result = run_command(
            args,
            env=env,
            # Not working/: a file a stage leaves in its working directory must not
            # be mistaken for a dropped file at the next start-up.
            cwd=tempfile.gettempdir(),
            timeout=ctx.timeout,
            output_cap=OUTPUT_CAP,
            cancel=ctx.cancel,
        )
        if result.returncode == 0:
            if ctx.rehearsal and result.output.strip():
                # `dropline try` shows what the program said; the daemon keeps quiet.
                return {"output": result.output.strip()[-2000:]}
            return None
        tail = result.output.strip()[-2000:]
        message = describe(result) + (f": {tail}" if tail else "")
        if not result.started:
            # Not this file's doing: no file gets through until it can start.
            raise UnavailableError(f"the program cannot be started: {result.output.strip()}")
        if result.timed_out:
            raise StageTimeout(message)
        if result.returncode == EX_DATAERR:
            raise PermanentError(message)
        raise RetriableError(message)

    return stage
