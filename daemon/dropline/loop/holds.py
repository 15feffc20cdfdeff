"""Names in incoming/ that a rule of tool_files keeps waiting (``toolnames.py``):
a tool's temporary beside its target, a grace for a name a tool rewrites, a
SQLite database while its journal is beside it.  Each hold is logged once,
and once more if it lasts too long."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from ..spool import Spool, open_folder, split_name
from ..toolnames import DATABASE_MAGIC, Beside, Hold
from .context import MAX_REMEMBERED, LoopContext, remember

# Seconds between looks at a name held while a file beside it is there.
_HOLD_RECHECK = 1.0
_HELD_LOG_EVERY = 60.0  # seconds: a name held again within this is not logged again


def _wait(hold: Hold, age: float) -> float:
    """Seconds before a name held at AGE is looked at again: a grace ends at a
    known age; a file beside it may go at any time."""
    return _HOLD_RECHECK if hold.grace is None else max(hold.grace - age, 0.0) + 0.01


@dataclass(slots=True)
class Held:
    """A name in incoming/ that a rule keeps waiting."""

    rule: str
    since: float  # monotonic: when it was first held
    # On a file beside it (not a grace): it waits for that, and does not keep
    # --exit-when-idle from exiting.
    waits: bool
    warned: bool = False  # logged as held too long


class ToolHolds:
    """The names held by a rule, and the databases found with a journal beside them."""

    def __init__(self, ctx: LoopContext, spool: Spool) -> None:
        self.ctx = ctx
        self.spool = spool
        self.beside = Beside(spool.dirs.incoming)
        self.held: dict[bytes, Held] = {}  # each also waits in the intake's settling
        # Databases the claim found with a journal beside them: asked about before
        # their claim from then on.
        self.databases: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.logged: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def only_waiting(self, names: dict[bytes, float]) -> bool:
        """Whether every one of NAMES is held until a file beside it goes: waiting on
        a writer that may never come back, so not work left for --exit-when-idle."""
        held = self.held
        return all(name in held and held[name].waits for name in names)

    def check(self, name: bytes, size: int, age: float) -> float | None:
        """Seconds NAME must wait, as a rule says; None if no rule holds it."""
        hold = self._hold_of(name, size, age)
        if hold is None:
            if self.held:  # (inline: asked of every file)
                self.held.pop(name, None)
            return None
        self._held(name, hold)
        return _wait(hold, age)

    def database_waits(self, name: bytes, hold: Hold) -> float:
        """The claim found NAME a database with its journal beside it: it waits."""
        self.databases[name] = None
        remember(self.databases, name, MAX_REMEMBERED)
        self._held(name, hold)
        return _wait(hold, 0.0)

    def forget(self, name: bytes) -> None:
        """NAME is gone, or no rule holds it any more."""
        if self.held:
            self.held.pop(name, None)

    def _beside(self, name: bytes) -> tuple[bytes, Beside, int]:
        """NAME's base name and the names beside it, with the folder's fd (-1: none)."""
        if b"/" not in name:
            return name, self.beside, -1
        folder, base = split_name(name)
        fd = open_folder(self.spool.dirs.incoming, folder)
        return base, Beside(fd), fd

    def _hold_of(self, name: bytes, size: int, age: float) -> Hold | None:
        """What a rule of tool_files says of NAME, judged among the names beside it."""
        # A database's wait for its journal is asked by the claim, once it has read
        # the file's first bytes (database_claimed); here only for one found so.
        journals = name in self.databases
        try:
            base, beside, fd = self._beside(name)
        except OSError:
            return None  # gone: its claim finds that out
        try:
            return self.ctx.routes.tool_names.hold(base, size, age, beside, journals)
        finally:
            if fd >= 0:
                os.close(fd)

    def database_claimed(self, name: bytes, head: bytes) -> Hold | None:
        """Asked by the claim of each file it read (spool.settings.judge_claimed): a SQLite
        database with a journal or a log beside it in incoming/ goes back there."""
        rules = self.ctx.routes.tool_names
        if not rules.sqlite or not (head == b"" or head.startswith(DATABASE_MAGIC)):
            return None  # nearly every file: not a database
        try:
            base, beside, fd = self._beside(name)
        except OSError:
            return None
        try:
            return rules.database_waits(base, head, beside)
        finally:
            if fd >= 0:
                os.close(fd)

    def _held(self, name: bytes, hold: Hold) -> None:
        """NAME waits, as HOLD says; logged once, and once more if that lasts too long."""
        mono = self.ctx.mono
        held = self.held.get(name)
        if held is None:
            held = self.held[name] = Held(hold.rule, mono, hold.grace is None)
            # A journal made again by each transaction is logged once a minute, not each time.
            logged = self.logged.get(name)
            if logged is None or mono - logged >= _HELD_LOG_EVERY:
                self.logged[name] = mono
                remember(self.logged, name, MAX_REMEMBERED)
                self.ctx.log.info("file.held", file=name, rule=hold.rule, reason=hold.reason)
        elif not held.warned and mono - held.since >= self.ctx.routes.tool_names.held_warning:
            held.warned = True
            self.ctx.log.warning(
                "file.held_long",
                file=name,
                rule=hold.rule,
                reason=hold.reason,
                seconds=round(mono - held.since),
                detail="not claimed while this lasts; see tool_files in the configuration",
            )
