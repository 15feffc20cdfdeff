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
        for p in routes.pipelines:
            if p.config.ready_marker:
                prefix, _, suffix = p.config.ready_marker.partition("{name}")
                self._shapes.append((p, os.fsencode(prefix), os.fsencode(suffix)))

    def __bool__(self) -> bool:
        return bool(self._shapes)

    def marker_of(self, name: bytes, pipeline: Pipeline | None) -> bytes | None:
        """The marker NAME waits for in PIPELINE (None: it waits for none)."""
        if pipeline is None or not pipeline.config.ready_marker:
            return None
        folder, _, base = name.rpartition(b"/")
        prefix, _, suffix = os.fsencode(pipeline.config.ready_marker).partition(b"{name}")
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
