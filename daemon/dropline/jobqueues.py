"""The jobs handed to the worker pool and not yet taken: one queue any worker
takes from, and one per worker for the files whose last stage its child ran.

A file's stages in the worker processes go back to the worker that ran its
previous one (``StageJob.prefer``): its child has the file's parse at hand
(``stages/csvcache.py``), so validate-csv, transform and a loader in a row
parse the file once instead of once each.  That is only a preference: a worker
with nothing to run takes a job waiting for another (whose child is busy), so
no file waits for one worker while another idles.

Each queue has a pipe holding one byte per job queued: a worker thread waits
on the pipes together with its child's results (``isolation.py``), and
whoever reads a job's byte takes the job.  The pipes are never closed: a
thread left in a stuck stage may come back to them after the pool is closed.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class JobQueues(Generic[T]):
    """The shared queue (index 0) and one queue per worker slot (1 + slot)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._queues: list[collections.deque[T]] = [collections.deque() for _ in range(slots + 1)]
        self._pipes: list[tuple[int, int]] = [os.pipe() for _ in range(slots + 1)]
        for read, _ in self._pipes:
            os.set_blocking(read, False)
        self._index_of = {read: index for index, (read, _) in enumerate(self._pipes)}

    def _index(self, slot: int | None) -> int:
        """The queue of worker SLOT: the shared one (0) for None or no such slot."""
        return slot + 1 if slot is not None and 0 <= slot < self.slots else 0

    def put(self, job: T, prefer: int | None = None) -> None:
        """Queue JOB for worker slot PREFER (any worker when None or no such slot)."""
        self.put_all([(job, prefer)])

    def put_all(self, jobs: list[tuple[T, int | None]]) -> None:
        """Queue each (job, prefer) of JOBS, with one write per queue: each write
        lets go of the interpreter lock, and a worker it wakes takes it."""
        counts = [0] * (self.slots + 1)
        with self._lock:
            for job, prefer in jobs:
                index = self._index(prefer)
                self._queues[index].append(job)
                counts[index] += 1
        for index, count in enumerate(counts):
            if count:
                os.write(self._pipes[index][1], b"j" * count)

    def fds(self, slot: int | None, shared: bool = True, others: bool = False) -> list[int]:
        """The pipes a worker of SLOT waits on, in the order it takes from them:
        its own queue's, the shared one's (SHARED) and the other workers'
        (OTHERS: it would take their jobs)."""
        mine = self._index(slot)
        order = [mine] if mine else []
        if shared:
            order.append(0)
        if others:
            order += [i for i in range(1, self.slots + 1) if i != mine]
        return [self._pipes[i][0] for i in order]

    def take(self, fds: list[int]) -> tuple[bool, T | None]:
        """The first job of the queues of FDS, in their order, whose byte this
        thread wins: (True, job), or (False, None) if there is none."""
        for fd in fds:
            try:
                if not os.read(fd, 1):
                    continue
            except BlockingIOError:
                continue
            with self._lock:  # the job was put before its byte was written
                return True, self._queues[self._index_of[fd]].popleft()
        return False, None

    def withdraw(self, matches: Callable[[T], bool]) -> list[T]:
        """Take out the queued jobs that MATCH (no worker will take them).

        A job and its byte are taken apart: a thread that has won a byte may be
        waiting for the lock to take its job.  So the bytes are read under the
        lock, as many as are left, and a job is put back at the front for each
        byte already won: every winner still finds a job (one of these, which its
        worker hands back as it would any job of a paused pipeline).
        """
        withdrawn: list[T] = []
        with self._lock:
            judged = [[(job, matches(job)) for job in queue] for queue in self._queues]
            for index, queue in enumerate(self._queues):  # (nothing taken out before here)
                gone = [job for job, match in judged[index] if match]
                if not gone:
                    continue
                kept = [job for job, match in judged[index] if not match]
                try:
                    read = len(os.read(self._pipes[index][0], len(gone)))
                except BlockingIOError:
                    read = 0
                back, gone = gone[: len(gone) - read], gone[len(gone) - read :]
                queue.clear()
                queue.extend(back + kept)
                withdrawn += gone
        return withdrawn
