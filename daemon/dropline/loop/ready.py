"""The files ready for their next step, one queue per pipeline, and whose turn it is.

A file with a stage to run waits in its pipeline's queue for a worker; a
file with nothing left to run (or no pipeline) waits in ``ends``, which the
scheduler empties every pass whatever the workers do.  So a pipeline's
backlog never stands in front of another pipeline's files.

Whose turn: a free worker goes to the pipeline with ready files, under its
``concurrency``, that has had the least of its share so far (stride
scheduling: each hand-out costs a pipeline 1/priority, a pipeline that was
idle starts level with the others rather than with credit saved up, ties go
to the higher priority, then to the pipeline declared first).  So pipelines
with work share the workers in the ratio of their priorities: one of
priority 3 gets three workers for each one of priority 1, and none with
ready files waits for more than the sum of the others' priorities of
hand-outs.  Nothing here touches the database or the workers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping

from ..pipeline import Pipeline, Routes
from ..stages import FAILURE
from .items import Item


class ReadyQueues:
    """Item ids ready to run a stage, by pipeline; and those ready to end."""

    def __init__(self) -> None:
        self.queues: dict[str, collections.deque[str]] = {}
        self.ends: collections.deque[str] = collections.deque()
        self._spent: dict[str, float] = {}  # a pipeline's hand-outs, each 1/priority
        self._level = 0.0  # the spent level of the last pipeline served
        self.closed: set[str] = set()  # paused pipelines: their files wait (loop/gates.py)

    def __len__(self) -> int:
        return len(self.ends) + sum(len(q) for q in self.queues.values())

    def add(self, item: Item, routes: Routes) -> None:
        """ITEM is ready: in its pipeline's queue for a worker, or to end this pass."""
        pipeline = routes.get(item.pipeline)
        if pipeline is None or item.next_stage >= stages_of(item, pipeline):
            self.ends.append(item.id)
        else:
            self.push(item.id, pipeline.name)

    def push(self, item_id: str, pipeline: str) -> None:
        """ITEM_ID of PIPELINE waits for a worker to run its next stage."""
        queue = self.queues.get(pipeline)
        if queue is None:
            queue = self.queues[pipeline] = collections.deque()
        if not queue:
            # Idle until now: it starts level with those served, not ahead by
            # what it did not use while it had nothing to run.
            self._spent[pipeline] = max(self._spent.get(pipeline, 0.0), self._level)
        queue.append(item_id)

    def waiting(self, pipeline: str) -> int:
        queue = self.queues.get(pipeline)
        return len(queue) if queue else 0

    @staticmethod
    def busy(running: Iterable[str], items: Mapping[str, Item]) -> dict[str, int]:
        """The stages RUNNING (item ids) by pipeline."""
        busy: dict[str, int] = {}
        for item_id in running:
            item = items.get(item_id)
            if item is not None and item.pipeline is not None:
                busy[item.pipeline] = busy.get(item.pipeline, 0) + 1
        return busy

    def next_turn(self, routes: Routes, busy: Mapping[str, int], workers: int) -> str | None:
        """The pipeline whose ready file gets the next free worker: None when no
        pipeline with ready files is under its concurrency (BUSY: stages
        handed out by pipeline; WORKERS: the limit of a pipeline that sets none)."""
        best: tuple[float, int, int] | None = None
        chosen = None
        for name, queue in self.queues.items():
            pipeline = routes.get(name)
            if pipeline is None:  # gone by a reload: its files end, one worker at a time
                key, limit = (-1.0, 0, 0), 1
            else:
                cfg = pipeline.config
                key = (self._spent.get(name, 0.0), -cfg.priority, cfg.line)
                limit = cfg.concurrency or workers
            if not queue or busy.get(name, 0) >= limit or name in self.closed:
                continue
            if best is None or key < best:
                best, chosen = key, name
        return chosen

    def pop(self, pipeline: str) -> str:
        """The oldest ready file of PIPELINE (which has one)."""
        queue = self.queues[pipeline]
        item_id = queue.popleft()
        if not queue:
            del self.queues[pipeline]  # a pipeline gone by a reload leaves nothing behind
        return item_id

    def take_probe(self, pipeline: str, rank: Callable[[str], int]) -> str | None:
        """For a held PIPELINE's probe: its ready file of the lowest RANK, the oldest
        of those; None if it has none ready.  Taken out of its queue, the share
        untouched."""
        queue = self.queues.get(pipeline)
        if not queue:
            return None
        chosen = min(queue, key=rank)  # (min keeps the first of equals: the oldest)
        queue.remove(chosen)
        if not queue:
            del self.queues[pipeline]
        return chosen

    def put_back(self, item_id: str, pipeline: str) -> None:
        """ITEM_ID, just popped, was not handed out: first in its queue again, its
        pipeline's share untouched."""
        queue = self.queues.get(pipeline)
        if queue is None:
            queue = self.queues[pipeline] = collections.deque()
        queue.appendleft(item_id)

    def served(self, pipeline: str, routes: Routes) -> None:
        """PIPELINE got a worker: it pays 1/priority of its share."""
        found = routes.get(pipeline)
        priority = found.config.priority if found is not None else 1
        spent = self._spent.get(pipeline, 0.0)
        self._level = spent
        self._spent[pipeline] = spent + 1.0 / priority
        if len(self._spent) > 4 * max(len(self.queues), 16):
            # Pipelines gone by reloads: forget those with nothing queued.
            self._spent = {p: s for p, s in self._spent.items() if p in self.queues}


def stages_of(item: Item, pipeline: Pipeline) -> int:
    """The stage index past ITEM's last: its pipeline's on_failure stages count
    once it has failed."""
    failing = FAILURE in item.metadata
    return len(pipeline.stages) + (len(pipeline.on_failure) if failing else 0)


__all__ = ["ReadyQueues", "stages_of"]
