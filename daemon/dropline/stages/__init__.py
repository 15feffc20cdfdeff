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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PermanentError


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


StageFunc = Callable[[StageContext], Mapping[str, Any] | None]


class StageTimeout(Exception):  # noqa: N818 - reads as an outcome, like TimeoutError
    """The stage ran past its timeout (retried like any other failure)."""


__all__ = ["PermanentError", "StageContext", "StageFunc", "StageTimeout"]
