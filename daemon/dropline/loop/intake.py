"""Intake: everything before a claim.

The names inotify told of, the names a scan or a look into a folder found and
that settle, the rules of tool_files that keep a name waiting, the entries
refused, the files held open by a writer.  ``take`` gives the loop the next
files to claim: checked, settled, not refused, not held.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterator

from ..crashpoints import pausepoint
from ..folders import DroppedFolders
from ..lifecycle.claim import ClaimResult
from ..markers import Markers
from ..spool import Entry, Refusal, Spool
from ..toolnames import Hold
from .context import MAX_REMEMBERED, LoopContext, remember
from .holds import ToolHolds
from .parked import Parked

_MAX_BUSY = 10_000  # names put back remembered, so each is logged once until claimed
_MAX_SETTLING = 10_000  # names from a scan waiting to settle; beyond, rescan later
# Bytes per claim batch, at most (with the file that crosses the line): the loop
# reads and hashes a whole batch in one pass (64 MiB: some 40 ms from the page
# cache), so a backlog of big files does not hold up the pass and its answers.
CLAIM_BYTES = 64 << 20

# How many more files of a pipeline (None: of no pipeline) may be taken into working/.
RoomOf = Callable[[str | None], int]


class Intake:
    """The names in incoming/ on their way to a claim."""

    def __init__(self, ctx: LoopContext, spool: Spool) -> None:
        self.ctx = ctx
        self.spool = spool
        self.holds = ToolHolds(ctx, spool)
        self.candidates: dict[bytes, None] = {}  # told by inotify: looked at first
        self.settling: dict[bytes, float] = {}  # name -> monotonic time to look again
        self.refused: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        # Files found held open for writing, each logged once per episode (with its (dev, ino)).
        self.held_open: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        # Names put back since their last claim: logged once, not at every put-back.
        self.busy: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # Folders dropped into incoming/: their files are looked for every second.
        self.folders = DroppedFolders(lambda name: self.ctx.routes.is_ignored(name))
        self.parked = Parked()  # names whose pipeline has no room now
        self.markers = Markers(ctx.routes)  # done-markers files wait for (ready_marker)
        # Markers seen without their file: when first seen, and whether told.
        self.orphans: collections.OrderedDict[bytes, tuple[float, bool]] = collections.OrderedDict()
        self.scan: Iterator[bytes] | None = None
        self.scan_seen = 0
        self.rescan_pending = ""  # why a rescan is due before its interval: "" when none is
        self.next_rescan = 0.0

    # --- what the loop asks ---------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self.candidates) + len(self.settling) + self.parked.count

    def has_work(self, room_of: RoomOf) -> bool:
        """Names to look at now (the loop does not sleep while there are)."""
        if self.candidates or self.scan is not None:
            return True
        return any(room_of(pipeline) > 0 for pipeline in self.parked.names)

    def next_deadline(self) -> float:
        deadlines = [self.next_rescan]
        folders_due = self.folders.due()
        if folders_due is not None:
            deadlines.append(folders_due)
        if self.settling:
            deadlines.append(min(self.settling.values()))
        return min(deadlines)

    def idle(self, closed: Collection[str] = ()) -> bool:
        """Nothing to look at but names parked for the CLOSED (paused) pipelines."""
        return not (
            self.candidates
            or (self.settling and not self.holds.only_waiting(self.settling))
            or self.scan is not None
            or self.folders.unlooked
            or any(names for p, names in self.parked.names.items() if p not in closed)
        )

    # --- what comes in ------------------------------------------------------------

    def notified(self, name: bytes) -> None:
        """inotify: NAME was closed after writing, or moved in."""
        self.candidates[name] = None

    def rescan(self, why: str) -> None:
        self.rescan_pending = why

    def start_scan(self) -> None:
        self.scan = self.spool.incoming.scan()
        self.scan_seen = 0
        self.rescan_pending = ""
        self.next_rescan = self.ctx.mono + self.ctx.config.rescan_interval

    def housekeeping(self) -> bool:
        """Folders and rescans, when due; True if a scan started."""
        mono = self.ctx.mono
        if self.folders.known and mono >= self.folders.next_look:
            self._look_into_folders()
        if self.scan is None and (self.rescan_pending or mono >= self.next_rescan):
            if self.rescan_pending in ("overflow", "watch"):
                self.ctx.log.info("scan.started", reason=self.rescan_pending)
            self.start_scan()
            return True
        return False

    def reloaded(self) -> None:
        """A new configuration is in force."""
        # A shorter rescan interval takes effect now, not after the old one runs out.
        cfg = self.ctx.config
        self.markers = Markers(self.ctx.routes)
        self.next_rescan = min(self.next_rescan, self.ctx.mono + cfg.rescan_interval)
        if not cfg.recursive and self.folders.known:
            # Its folders are refused from now on: the rescan finds them again.
            self.folders.known.clear()
            self.rescan_pending = self.rescan_pending or "reload"

    # --- the next files to claim ---------------------------------------------------

    def _next_names(self, limit: int, room_of: RoomOf) -> list[tuple[bytes, bool]]:
        """Up to LIMIT names to look at: those parked for a pipeline that has room
        now, then events, then settled ones, then the scan."""
        names: list[tuple[bytes, bool]] = []
        mono = self.ctx.mono
        for pipeline in list(self.parked.names):
            room = min(room_of(pipeline), limit - len(names))
            if room > 0:
                unparked, rescan = self.parked.take(pipeline, room)
                names.extend(unparked)
                if rescan:  # names were left out while it was full: a scan finds them
                    self.rescan_pending = self.rescan_pending or "parked"
        while self.candidates and len(names) < limit:
            name = next(iter(self.candidates))
            del self.candidates[name]
            self.settling.pop(name, None)
            names.append((name, True))
        if self.settling and len(names) < limit:
            for name, due in list(self.settling.items()):
                if due <= mono:
                    del self.settling[name]
                    names.append((name, False))
                    if len(names) >= limit:
                        break
        if self.scan is not None:
            budget = limit * 4  # entries skipped (ignored, refused) also cost time
            while len(names) < limit and budget > 0:
                scanned: bytes | None = next(self.scan, None)
                if scanned is None:
                    self.ctx.log.info("scan.completed", entries=self.scan_seen)
                    self.scan = None
                    break
                budget -= 1
                self.scan_seen += 1
                names.append((scanned, False))
        return names

    def take(self, now: float, room: int, room_of: RoomOf, in_flight: set[bytes]) -> list[Entry]:
        """The next files to claim (up to ROOM, and up to ROOM_OF(pipeline) of each
        pipeline): checked, settled, not refused.  A name whose pipeline has no
        room is parked until it has, and the names behind it are looked at.

        IN_FLIGHT: names whose claim is with the mover."""
        if room <= 0:
            return []
        ctx = self.ctx
        entries: list[Entry] = []
        seen: set[bytes] = set()
        rooms: dict[str | None, int] = {}
        size = 0
        markers = self.markers
        for name, notified in self._next_names(room, room_of):
            if name in seen or ctx.routes.is_ignored(name):
                continue
            if markers and self._is_marker(name):
                continue
            route = ctx.routes.route(name)
            pipeline = route.name if route is not None else None
            left = rooms[pipeline] if pipeline in rooms else room_of(pipeline)
            if left <= 0:
                self._park(pipeline, name, notified)
                continue
            rooms[pipeline] = left
            if name in in_flight or size >= CLAIM_BYTES:
                # Its claim is with the mover (a new file of the same name may have
                # come meanwhile), or this batch has its bytes: look again next time.
                if notified:
                    self.candidates[name] = None
                else:
                    self.settling[name] = ctx.mono
                continue
            seen.add(name)
            pausepoint("intake.look")
            found = self.spool.incoming.inspect(name)
            if found is None:
                self.holds.forget(name)
                continue
            if isinstance(found, Refusal):
                if found.kind != "directory":
                    self.refuse(found)
                elif b"/" not in name:
                    self.folder_found(name, found)
                # (A folder inside a folder: the next look goes into it.)
                continue
            marker = markers.marker_of(name, route) if markers else None
            if marker is not None:
                made = self.spool.incoming.marker_ctime(marker)
                if made is None or made < found.ctime_ns:
                    continue  # its marker is not there (or is an earlier file's): it waits
            age = now - max(found.mtime_ns, found.ctime_ns) / 1e9
            wait = self.holds.check(name, found.size, age)
            if wait is not None:  # a rule of tool_files keeps it waiting
                self._settle(name, wait)
                continue
            if not notified and age < ctx.config.settle_time:
                # Found by a scan and still changing: its writer may be at work.
                self._settle(name, ctx.config.settle_time - age)
                continue
            # Evidence beats timing: a close event or a settled file whose writer
            # still holds it open (another descriptor, or reopened).  The claim
            # asks the kernel after its rename (spool.hash_working), which sees
            # every writer: a file found held open there is put back and, from
            # then on, asked about here first, before any rename.  So a file
            # held open long costs one claim and put-back, not one a look; and
            # every other file one lease probe, not two (measured: 10 us a file).
            if found.name in self.held_open and self.spool.incoming.held_open(found):
                self._found_held_open(found)
                continue
            entries.append(found)
            rooms[pipeline] = left - 1
            size += found.size
        return entries

    def _is_marker(self, name: bytes) -> bool:
        """Whether NAME is a done-marker (never claimed itself): its file is looked at
        now (it may have waited for it); one without its file is told after a while."""
        gated = self.markers.file_of(name)
        if gated is None:
            return False
        if self.spool.incoming.inspect(gated) is not None:
            self.orphans.pop(name, None)
            self.candidates[gated] = None
            return True
        since, told = self.orphans.get(name, (self.ctx.mono, False))
        waited = self.ctx.mono - since
        if not told and waited >= self.ctx.config.tool_files.held_warning:
            self.ctx.log.warning(
                "marker.orphaned", file=name, waits_for=gated, seconds=round(waited, 1)
            )
            told = True
        self.orphans[name] = (since, told)
        remember(self.orphans, name, MAX_REMEMBERED)
        return True

    def _park(self, pipeline: str | None, name: bytes, notified: bool) -> None:
        """NAME waits for room in its PIPELINE, out of the way of the others."""
        self.parked.park(pipeline, name, notified)
        self.settling.pop(name, None)

    def _settle(self, name: bytes, wait: float) -> None:
        """Look at NAME again in WAIT seconds (or at the next rescan, if too many wait)."""
        if len(self.settling) < _MAX_SETTLING:
            self.settling[name] = self.ctx.mono + wait
        else:
            self.rescan_pending = self.rescan_pending or "settling"

    # --- folders dropped into incoming/ (folders.py) -------------------------

    def folder_found(self, name: bytes, seen: Refusal | None = None) -> None:
        """A folder directly in incoming/: its files processed, or refused if
        ``recursive`` is off.  SEEN: what a look at it said, if one was made."""
        if self.ctx.routes.is_ignored(name):
            return  # hidden or temporary: rsync's --partial-dir, for one
        if self.ctx.config.recursive:
            if self.folders.found(name, self.ctx.mono):
                self.ctx.log.info("folder.found", file=name)
            return
        if seen is None:
            found = self.spool.incoming.inspect(name)
            if not isinstance(found, Refusal):
                return  # gone, or not a folder after all: a look at it decides
            seen = found
        self.refuse(
            Refusal(
                name,
                "a folder (recursive is off: only files directly in incoming/ are processed)",
                seen.dev,
                seen.ino,
                "directory",
            )
        )

    def _look_into_folders(self) -> None:
        """Every second while there are folders: their files join the names that
        settle (found by a look, not by inotify), emptied folders go."""
        mono = self.ctx.mono
        look = self.folders.look(
            self.spool, mono, _MAX_SETTLING, self.ctx.config.remove_empty_folders_after
        )
        settling = self.settling
        for name in look.names:
            if len(settling) >= _MAX_SETTLING:
                break
            if name not in settling and name not in self.candidates:
                settling[name] = mono
        for refusal in look.refused:
            self.refuse(refusal)
        for folder in look.removed:
            self.ctx.log.info("folder.removed", file=folder, detail="emptied")

    # --- refused, held open, put back -------------------------------------------

    def refuse(self, refusal: Refusal) -> None:
        """Not to be claimed; told once per entry (its dev and inode)."""
        key = (refusal.dev, refusal.ino)
        if self.refused.get(refusal.name) == key:
            return
        self.refused[refusal.name] = key
        remember(self.refused, refusal.name, MAX_REMEMBERED)
        self.ctx.events.refused(refusal)

    def _found_held_open(self, entry: Entry) -> None:
        """Not claimed: a process holds it open for writing.  Looked at again at its
        close event, or after a while; logged once per file and episode."""
        key = (entry.dev, entry.ino)
        if self.held_open.get(entry.name) != key:
            self.held_open[entry.name] = key
            remember(self.held_open, entry.name, MAX_REMEMBERED)
            self.ctx.log.info(
                "file.held_open",
                file=entry.name,
                detail="a process holds it open for writing; claimed once it is closed",
            )
        self._settle(entry.name, self.ctx.open_recheck())

    def not_claimed(self, result: ClaimResult) -> None:
        """The files a claim batch left in incoming/: refused, held, put back."""
        for refusal in result.refused:
            self.refuse(refusal)
        for entry in result.held_open:
            self._found_held_open(entry)
        for entry, why in result.kept_by_rule:
            assert isinstance(why, Hold)
            self._settle(entry.name, self.holds.database_waits(entry.name, why))
        for name in result.busy:
            # Put back: claimed once its writer closes it, or once it settles.
            # Logged once, not at each put-back of a file written for long.
            if name not in self.busy:
                self.ctx.log.info("file.busy", file=name, detail="still being written; put back")
                self.busy[name] = None
                remember(self.busy, name, _MAX_BUSY)
            self.settling[name] = self.ctx.mono + self.ctx.config.settle_time
        for name, _ in result.taken:
            self.candidates[name] = None  # claimed again under a unique working name
        for name in result.lost:
            self.ctx.log.info("file.gone", file=name, detail="gone from incoming/ before its claim")

    def claimed(self, name: bytes) -> None:
        """NAME was claimed: what was remembered of it ends."""
        if self.held_open:
            self.held_open.pop(name, None)  # the episode ends
        databases = self.holds.databases  # (no call: asked of every file)
        if databases:
            databases.pop(name, None)
        if self.busy:
            self.busy.pop(name, None)
