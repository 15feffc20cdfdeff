"""Names in incoming/ whose pipeline has no room in working/ now (max_in_flight).

Each pipeline's names wait apart, so a pipeline's backlog never stands in
front of another pipeline's files: the intake looks past them, and offers
them first once their pipeline has room again.  Bounded: beyond the bound a
name is left out, and the rescan that follows its pipeline's room finds it
again.  Nothing here looks at a file.
"""

from __future__ import annotations

MAX_PARKED = 10_000  # names waiting for room, all pipelines together


class Parked:
    """Names waiting for room, by pipeline (None: a name no pipeline matches)."""

    def __init__(self, limit: int = MAX_PARKED) -> None:
        self.limit = limit
        # By pipeline: name -> whether inotify told of it (a told name needs no settle time).
        self.names: dict[str | None, dict[bytes, bool]] = {}
        self.count = 0
        self.left_out: set[str | None] = set()  # pipelines that had names left out

    def __bool__(self) -> bool:
        return self.count > 0

    def park(self, pipeline: str | None, name: bytes, notified: bool) -> None:
        parked = self.names.setdefault(pipeline, {})
        if name in parked:
            parked[name] = parked[name] or notified
        elif self.count < self.limit:
            parked[name] = notified
            self.count += 1
        else:
            self.left_out.add(pipeline)

    def take(self, pipeline: str | None, count: int) -> tuple[list[tuple[bytes, bool]], bool]:
        """Up to COUNT names parked for PIPELINE, oldest first; and whether a
        rescan is due (the last were taken, and names had been left out)."""
        parked = self.names[pipeline]
        names: list[tuple[bytes, bool]] = []
        for name, notified in parked.items():
            if len(names) >= count:
                break
            names.append((name, notified))
        for name, _ in names:
            del parked[name]
        self.count -= len(names)
        if parked:
            return names, False
        del self.names[pipeline]
        if pipeline in self.left_out:
            self.left_out.discard(pipeline)
            return names, True
        return names, False


__all__ = ["MAX_PARKED", "Parked"]
