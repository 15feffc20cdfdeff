"""Stages: the work a pipeline does to a file, in three kinds.

- ``command``: an external program, argv list, run in its own process group
  (``stages.command``);
- ``python``: an operator's callable ``module:function`` (``stages.python``);
- ``builtin``: a stage shipped with dropline (``stages.builtin``).

Every stage is a callable taking a StageContext and returning a mapping of
metadata (or None) for the stages after it.  It signals "this file is bad,
do not retry" by raising PermanentError; any other exception is retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PermanentError, RetriableError, UnavailableError


@dataclass(frozen=True)
class StageContext:
    """What a stage knows about the file it works on."""

    item_id: str  # stable across retries and restarts: the idempotency key
    path: Path  # the file in working/
    name: str  # its original name in incoming/ (undecodable bytes surrogate-escaped)
    pipeline: str
    stage: str
    attempt: int  # 1 for the first attempt
    metadata: Mapping[str, Any] = field(default_factory=dict)  # from earlier stages
    log: Any = None  # a structlog logger bound to item, file, pipeline and stage
    timeout: float = 0.0  # seconds the stage may take
    cancel: Any = None  # a threading.Event set when the daemon wants the stage to stop
    # A folder of this item's own for files a stage derives (a transformed copy):
    # kept across restarts until the item ends, then removed.  Created on demand
    # by ``scratch_dir()``.
    scratch: Path | None = None
    # True under `dropline try`: the file is a scratch copy and nothing may
    # count.  The builtins then load inside a transaction that is rolled back
    # and only describe a publish or a webhook; a stage of the operator's own
    # that runs there (``try: run``) can read it to do the same.
    rehearsal: bool = False

    def data_file(self) -> Path:
        """The file to read: a transform's output when an earlier stage made one, else PATH."""
        derived = self.metadata.get(DATA_PATH)
        return Path(derived) if isinstance(derived, str) and derived else self.path

    def scratch_dir(self) -> Path:
        """This item's scratch folder, created (mode 0750) if need be."""
        if self.scratch is None:
            raise RuntimeError("this stage runs without a scratch folder")
        self.scratch.mkdir(mode=0o750, parents=True, exist_ok=True)
        return self.scratch


# The metadata key under which a stage that derives a new file (transform)
# names it; the stages after it read that file (``StageContext.data_file``).
DATA_PATH = "data_path"
# In a pipeline's ``on_failure`` stages, the metadata key holding why the file
# failed: {"stage": "validate", "reason": "..."}; absent in ordinary stages.
FAILURE = "failure"


StageFunc = Callable[[StageContext], Mapping[str, Any] | None]


class StageTimeout(Exception):  # noqa: N818 - reads as an outcome, like TimeoutError
    """The stage ran past its timeout (retried like any other failure)."""


def call_stage(func: StageFunc, ctx: StageContext) -> tuple[str, str, dict[str, Any]]:
    """Run FUNC on CTX and say how it ended: (outcome, error, metadata).

    The outcome is "succeeded", "permanent" (PermanentError: no retries),
    "timeout", "unavailable" (UnavailableError: the stage cannot work for any
    file now; the pipeline holds) or "failed" (anything else, retried).  The metadata is
    recorded, so what cannot be written as JSON fails the attempt.
    """
    try:
        returned = func(ctx)
        metadata = dict(returned) if returned is not None else {}
        json.dumps(metadata)
    except PermanentError as exc:
        return "permanent", str(exc) or type(exc).__name__, {}
    except StageTimeout as exc:
        return "timeout", str(exc), {}
    except UnavailableError as exc:
        return "unavailable", str(exc) or type(exc).__name__, {}
    except RetriableError as exc:
        return "failed", str(exc) or type(exc).__name__, {}
    except BaseException as exc:  # noqa: BLE001 - a stage must never kill its worker
        return "failed", f"{type(exc).__name__}: {exc}", {}
    return "succeeded", "", metadata


__all__ = [
    "DATA_PATH",
    "FAILURE",
    "PermanentError",
    "StageContext",
    "StageFunc",
    "StageTimeout",
    "call_stage",
]
