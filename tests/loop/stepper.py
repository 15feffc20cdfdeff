"""A daemon built in-process from real parts, stepped one pass at a time.

Real SQLite in tmp_path, real folders, real inotify, real worker threads
and stage processes; the mover's moves run in this process (``InlineMover``:
the same functions as the mover process, without the pipe), and the loop's
monotonic clock is a ``StepClock`` the test moves on: a retry due in an hour
is due after ``advance(3600)``, without waiting for it.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from dropline.config import load_config
from dropline.loop.daemon import Daemon
from dropline.loop.signals import Flags
from dropline.loop.startup import start_daemon
from dropline.spool import Spool
from dropline.spool.mover import Folders, Ticket, claim, finish

from ..harness import Tree


class InlineMover:
    """The mover's side of a batch, done at ``send`` in this process."""

    def __init__(self, spool: Spool, keep_fds: Sequence[int] = ()) -> None:
        self.folders = Folders(
            spool.dirs.incoming, spool.dirs.working, spool.dirs.archive, spool.dirs.failed
        )
        self.sent = 0  # batches handed over

    def send(self, kind: str, moves: Sequence[Any]) -> Ticket:
        ticket = Ticket()
        moves = list(moves)
        ticket.answer = (
            claim(self.folders, moves) if kind == "claim" else finish(self.folders, moves)
        )
        ticket.done = True
        self.sent += 1
        return ticket

    def answer(self, ticket: Ticket) -> Any:
        return ticket.answer

    def close(self) -> None:
        self.folders.close_old_days()


class StepClock:
    """The loop's monotonic clock: real time, plus what the test moved it on by."""

    def __init__(self) -> None:
        self.offset = 0.0  # added to wall time too: what is recorded agrees

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Stepper:
    daemon: Daemon
    clock: StepClock
    events: list[MutableMapping[str, Any]]
    flags: Flags
    passes: int = field(default=0)

    def step(self) -> bool:
        """Take what the inbox holds, then one pass; True when the daemon would exit."""
        inbox = self.flags.inbox
        while True:
            try:
                self.daemon.absorb(inbox.get_nowait())
            except queue.Empty:
                break
        self.passes += 1
        return self.daemon.run_once(time.time() + self.clock.offset)

    def until(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        """Step until DONE() holds; between passes wait a little for the workers."""
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not done after {self.passes} passes; events: {self.names()}")
            with contextlib.suppress(queue.Empty):
                self.daemon.absorb(self.flags.inbox.get(timeout=0.01))

    def until_idle(self, timeout: float = 15.0) -> None:
        self.until(self.daemon.idle, timeout)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def find(self, event: str, **fields: Any) -> list[MutableMapping[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
        ]


@contextlib.contextmanager
def stepped(tree: Tree) -> Iterator[Stepper]:
    """The daemon of TREE's configuration, started in this process and stopped at the end."""
    config = load_config(tree.config)
    clock = StepClock()
    flags = Flags()
    with (
        structlog.testing.capture_logs() as events,
        start_daemon(config, flags=flags, clock=clock, mover=InlineMover) as daemon,
    ):
        yield Stepper(daemon, clock, events, flags)
