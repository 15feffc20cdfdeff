"""Memory of a process and all its descendants: PSS summed, RSS and PSS of each.

PSS (proportional set size, /proc/PID/smaps_rollup) splits each shared page
between the processes that map it, so summing it over the daemon and its
children counts the interpreter's shared pages once, where summing RSS counts
them in every child.  The sampler follows the process tree by parent PID
(commands run in sessions of their own, so the process group would miss
them) and keeps the peak of the sum, and each process's own peaks.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


def _parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])  # field 4 of proc(5), ppid


def descendants(root: int) -> list[int]:
    """ROOT and every living process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                parents.setdefault(parent, []).append(int(entry))
    out, todo = [root], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_pss_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of PID in KiB from smaps_rollup; None once it is gone."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None if rss is None or pss is None else (rss, pss)


def _name(pid: int) -> str:
    """A short name for PID: its command line's module or program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.fsdecode(a) for a in argv if a]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    return os.path.basename(words[0]) if words else "?"


@dataclass
class ProcessPeak:
    """One process's peaks while sampled."""

    pid: int
    name: str
    rss_kib: int = 0
    pss_kib: int = 0


@dataclass
class TreeMemory:
    """The peak of the summed PSS over the tree, and each process's peaks."""

    root: int
    peak_pss_kib: int = 0
    peak_rss_kib: int = 0  # the summed RSS at its own peak (shared pages counted again)
    processes: dict[int, ProcessPeak] = field(default_factory=dict)
    samples: int = 0

    def children(self) -> list[ProcessPeak]:
        """The peaks of every process but the root, in the order they were seen."""
        return [p for pid, p in self.processes.items() if pid != self.root]


class TreeSampler:
    """Samples a process tree's memory in a thread until stopped."""

    def __init__(self, root: int, interval: float = 0.05, tree_every: int = 4) -> None:
        self.root = root
        self.memory = TreeMemory(root)
        self._interval = interval
        self._tree_every = tree_every
        self._members: list[int] = [root]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss", daemon=True)
        self._thread.start()

    def sample(self, look_for_children: bool) -> None:
        if look_for_children:
            self._members = descendants(self.root)
        pss_sum = rss_sum = 0
        for pid in self._members:
            got = rss_pss_kib(pid)
            if got is None:
                continue
            rss, pss = got
            rss_sum += rss
            pss_sum += pss
            peak = self.memory.processes.get(pid)
            if peak is None:
                peak = self.memory.processes[pid] = ProcessPeak(pid, _name(pid))
            peak.rss_kib = max(peak.rss_kib, rss)
            peak.pss_kib = max(peak.pss_kib, pss)
        if pss_sum:
            self.memory.samples += 1
            self.memory.peak_pss_kib = max(self.memory.peak_pss_kib, pss_sum)
            self.memory.peak_rss_kib = max(self.memory.peak_rss_kib, rss_sum)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            # Often at first: a child started early (the mover) is counted in a short run.
            self.sample(look_for_children=rounds < 10 or rounds % self._tree_every == 0)
            rounds += 1
            self._stop.wait(self._interval)

    def stop(self) -> TreeMemory:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.memory
