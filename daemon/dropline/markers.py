"""Done-markers (``ready_marker: "{name}.done"``, Camel's done files): which names are
markers, and the marker a file waits for.

A pipeline with a ready_marker claims a file only once its marker is beside
it (in the same folder of incoming/) and is not older than the file (by
change time, which no writer can set back: a marker left from an earlier
file of the same name does not count for a new one).  A marker is never
claimed as a file; it goes when its file is claimed.  Pure: nothing here
touches the disk.
"""

from __future__ import annotations

import os

from .pipeline import Pipeline, Routes


class Markers:
    """The ready_marker templates of the configured pipelines."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._shapes: list[tuple[Pipeline, bytes, bytes]] = []
        self._shape_of: dict[str, tuple[bytes, bytes]] = {}  # by pipeline: (prefix, suffix)
        for p in routes.pipelines:
            if p.config.ready_marker:
                prefix, _, suffix = p.config.ready_marker.partition("{name}")
                shape = (os.fsencode(prefix), os.fsencode(suffix))
                self._shapes.append((p, *shape))
                self._shape_of[p.name] = shape

    def __bool__(self) -> bool:
        return bool(self._shapes)

    def marker_of(self, name: bytes, pipeline: Pipeline | None) -> bytes | None:
        """The marker NAME waits for in PIPELINE (None: it waits for none)."""
        shape = self._shape_of.get(pipeline.name) if pipeline is not None else None
        if shape is None:
            return None
        folder, _, base = name.rpartition(b"/")
        prefix, suffix = shape
        marker = prefix + base + suffix
        return folder + b"/" + marker if folder else marker

    def file_of(self, name: bytes) -> bytes | None:
        """If NAME is the marker of a file (of a pipeline that waits for markers), that
        file's name; else None."""
        folder, slash, base = name.rpartition(b"/")
        for pipeline, prefix, suffix in self._shapes:
            if len(base) <= len(prefix) + len(suffix):
                continue
            if not (base.startswith(prefix) and base.endswith(suffix)):
                continue
            stem = base[len(prefix) : len(base) - len(suffix)]
            candidate = folder + slash + stem
            if self.routes.route(candidate) is pipeline:
                return candidate
        return None


__all__ = ["Markers"]
