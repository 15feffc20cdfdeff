"""The files in flight, as the loop tracks them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..state import ItemRow


@dataclass
class Item:
    """A file in working/, as the loop tracks it."""

    id: str
    name: bytes
    working_name: bytes
    pipeline: str | None
    next_stage: int = 0
    attempt: int = 0  # failed attempts of next_stage
    next_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    created_at: float = 0.0
    # (size, ctime) as claimed or as the last stage left it: a change in between
    # means someone still writes to it.
    fingerprint: tuple[int, int] | None = None
    fingerprint_pass: int = -1  # the loop's pass that took it (see Scheduler._changed_under_us)

    @classmethod
    def from_row(cls, row: ItemRow) -> Item:
        """An item as the database recorded it (at start, after recovery)."""
        return cls(
            row.id,
            row.name,
            row.working_name,
            row.pipeline,
            row.next_stage,
            row.attempt,
            row.next_attempt_at,
            row.metadata,
            row.sha256,
            row.created_at,
            (row.size, row.ctime_ns) if row.size is not None and row.ctime_ns else None,
        )


@dataclass
class Running:
    """A stage attempt handed to a worker."""

    token: int
    attempt_id: int
    stage_index: int
    stage: str
    kind: str
    started: float
    deadline: float
    cancel: threading.Event
    begun: threading.Event | None = None  # set by the worker when it starts the attempt
    pipeline: str = ""
