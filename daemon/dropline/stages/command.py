"""External command stages: an argv list, never a shell string.

Placeholders in any argument: ``{path}`` (the file in working/), ``{name}``
(its original name), ``{item_id}``, ``{pipeline}``, ``{stage}``; replaced as
bytes, so a name is passed verbatim whatever it holds.  The environment adds
DROPLINE_ITEM_ID, DROPLINE_PATH, DROPLINE_NAME, DROPLINE_PIPELINE,
DROPLINE_STAGE and DROPLINE_ATTEMPT.  Exit 0 succeeds; 65 (EX_DATAERR) means
the file is bad and fails at once; anything else is retried.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ..errors import PermanentError
from ..process import describe, run_command
from . import StageContext, StageFunc, StageTimeout

EX_DATAERR = 65
OUTPUT_CAP = 64 * 1024


def build_command_stage(argv: tuple[str, ...]) -> StageFunc:
    """The stage function running ARGV for each file."""
    template = [arg.encode() for arg in argv]

    def stage(ctx: StageContext) -> Mapping[str, Any] | None:
        path = os.fsencode(ctx.path)
        name = os.fsencode(ctx.name)
        values = {
            b"{path}": path,
            b"{name}": name,
            b"{item_id}": ctx.item_id.encode(),
            b"{pipeline}": ctx.pipeline.encode(),
            b"{stage}": ctx.stage.encode(),
        }
        args = []
        for arg in template:
            for placeholder, value in values.items():
                if placeholder in arg:
                    arg = arg.replace(placeholder, value)
            args.append(arg)
        env = dict(os.environb)
        env.update(
            {
                b"DROPLINE_ITEM_ID": ctx.item_id.encode(),
                b"DROPLINE_PATH": path,
                b"DROPLINE_NAME": name,
                b"DROPLINE_PIPELINE": ctx.pipeline.encode(),
                b"DROPLINE_STAGE": ctx.stage.encode(),
                b"DROPLINE_ATTEMPT": str(ctx.attempt).encode(),
            }
        )
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
            return None
        tail = result.output.strip()[-2000:]
        message = describe(result) + (f": {tail}" if tail else "")
        if result.timed_out:
            raise StageTimeout(message)
        if result.returncode == EX_DATAERR:
            raise PermanentError(message)
        raise RuntimeError(message)

    return stage
