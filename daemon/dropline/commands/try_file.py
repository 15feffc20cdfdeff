"""``dropline try FILE``: where a file would go and what its stages would make of it.

Read-only for dropline: the state database is not opened and no folder of
the daemon's is touched.  The route is told with its reason (the glob that
took the name, or the ``ignore`` glob that hides it); the stages run on a
scratch copy (``rehearsal.py``).  The verdict is "archived", "failed",
"ignored" or "refused" (an entry the daemon would not claim at all).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from .. import console as c
from ..config import Config
from ..errors import ConfigError
from ..escaping import escape_text, field_text
from ..globs import compile_globs
from ..markers import Markers
from ..pipeline import Pipeline, Routes
from ..rehearsal import RefusedError, StageRun, run_pipeline, scratch_copy

NO_PIPELINE = "no pipeline matches this name"  # the daemon's own reason (loop/scheduler.py)


def _first_glob(globs: tuple[str, ...] | list[str], text: str) -> str | None:
    return next((g for g in globs if compile_globs([g]).match(text)), None)


def route(config: Config, routes: Routes, name: str) -> dict[str, Any]:
    """Where the daemon sends NAME, and why."""
    ignored = _first_glob(list(config.ignore), name)
    if ignored is not None:
        return {"pipeline": None, "glob": ignored, "why": f'it matches ignore "{ignored}"'}
    for p in routes.pipelines:
        glob = _first_glob(list(p.config.match), name)
        if glob is not None:
            line = p.config.match_line or p.config.line
            why = f'pipeline "{p.name}": the first whose match fits ("{glob}", line {line})'
            return {"pipeline": p.name, "glob": glob, "why": why}
    return {"pipeline": None, "glob": None, "why": NO_PIPELINE}


def collect(config: Config, file: str, chosen: str | None) -> dict[str, Any]:
    """Try FILE (through pipeline CHOSEN, else where its name routes it)."""
    routes = Routes(config)  # every stage built: as the daemon would at start
    path = Path(file)
    name = path.name
    if not name or not os.path.lexists(path):
        raise ConfigError(f"{escape_text(file)}: no such file")
    routed = route(config, routes, name)
    pipeline: Pipeline | None
    if chosen is not None:
        pipeline = routes.get(chosen)
        if pipeline is None:
            names = ", ".join(p.name for p in routes.pipelines) or "none"
            raise ConfigError(f'--pipeline: no pipeline "{chosen}" (pipelines: {names})')
    else:
        pipeline = routes.get(routed["pipeline"])
    marker = Markers(routes).marker_of(os.fsencode(name), pipeline)
    doc: dict[str, Any] = {
        "paused": _paused(config, pipeline.name) if pipeline else None,
        "marker": escape_text(marker) if marker is not None else None,
        "file": escape_text(os.fsencode(path)),
        "name": escape_text(os.fsencode(name)),
        "size": None,
        "sha256": None,
        "route": {**routed, "chosen": chosen},
        "pipeline": pipeline.name if pipeline else None,
        "stages": [],
        "skipped": [],
        "outcome": "",
        "reason": None,
        "retriable": False,
    }
    try:
        with scratch_copy(path, config.max_file_size) as copy:
            doc["size"], doc["sha256"] = copy.size, copy.sha256
            if pipeline is None:
                ignored = routed["glob"] is not None
                doc["outcome"] = "ignored" if ignored else "failed"
                doc["reason"] = routed["why"] if ignored else NO_PIPELINE
                return doc
            runs, failure = run_pipeline(pipeline, copy, name)
    except RefusedError as exc:
        doc["outcome"], doc["reason"] = "refused", str(exc)
        return doc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a symbolic link since it was judged
            doc["outcome"], doc["reason"] = "refused", "symbolic link (never followed)"
            return doc
        where = f" ({escape_text(os.fsencode(exc.filename))})" if exc.filename else ""
        raise ConfigError(f"{escape_text(file)}: cannot be tried: {exc.strerror}{where}") from None
    doc["stages"] = [_stage_doc(run) for run in runs]
    doc["skipped"] = [run.stage for run in runs if run.outcome == "skipped"]
    doc["outcome"] = "failed" if failure else "archived"
    doc["reason"] = failure.get("reason")
    doc["retriable"] = bool(failure.get("retriable"))
    return doc


def _paused(config: Config, pipeline: str) -> bool | None:
    """Whether PIPELINE is paused (``dropline pause``); None when the state cannot
    be read (none yet, or not for this user)."""
    from .pause import read_paused

    try:
        paused = read_paused(config)
    except PermissionError:
        return None
    return None if paused is None else pipeline in paused


def _stage_doc(run: StageRun) -> dict[str, Any]:
    return {
        "stage": run.stage,
        "kind": run.kind,
        "part": run.part,
        "try": run.mode,
        "outcome": run.outcome,
        "error": run.error or None,
        "seconds": run.seconds,
        "retries": run.retries,
        "metadata": run.metadata,
        "output": run.output,
    }


_VERDICT = {
    "archived": "would be archived",
    "failed": "would fail",
    "ignored": "would never be claimed (left in incoming/)",
    "refused": "would be refused and left in incoming/",
}


def render(doc: dict[str, Any], out: c.Console) -> None:
    size = c.size(doc["size"]) if doc["size"] is not None else "-"
    out.line(out.paint(doc["file"], "bold") + f"  {size}, sha256 {doc['sha256'] or '-'}")
    route = doc["route"]
    if route["chosen"]:
        out.line(f'Route: pipeline "{route["chosen"]}" (--pipeline); by its name: {route["why"]}')
    else:
        out.line(f"Route: {'ignored: ' if doc['outcome'] == 'ignored' else ''}{route['why']}")
    if doc["stages"]:
        out.line()
        rows, colours = [], []
        for s in doc["stages"]:
            took = f"{s['seconds'] * 1000:.0f} ms" if s["seconds"] is not None else "-"
            outcome = s["outcome"] + (" (try: skip)" if s["outcome"] == "skipped" else "")
            said = s["error"] or s["metadata"].get("would") or _brief(s["metadata"])
            said = c.shorten(said, 100)
            part = "on_failure " if s["part"] == "on_failure" else ""
            rows.append([part + s["stage"], s["kind"], outcome, took, said])
            colours.append({"succeeded": None, "skipped": "yellow"}.get(s["outcome"], "red"))
        out.table(["STAGE", "KIND", "OUTCOME", "TOOK", "SAID"], rows, colours=colours)
        for s in doc["stages"]:
            if s["output"]:
                out.line()
                out.line(f"Output of {s['stage']}:")
                for line in s["output"]:
                    out.line(f"  {escape_text(line)}")
    out.line()
    verdict = _VERDICT[doc["outcome"]]
    colour = "green" if doc["outcome"] == "archived" else "red"
    out.line(
        "Outcome: " + out.paint(verdict, colour) + (f": {doc['reason']}" if doc["reason"] else "")
    )
    if doc["retriable"]:
        out.line(
            "  (a retriable error: the daemon would try again as the stage's retries allow, "
            "and fail so only if every attempt does)"
        )
    if doc["marker"]:
        out.line(
            f"Marker: in incoming/ the file waits for {doc['marker']} beside it (ready_marker), "
            "then goes as above; the marker goes with it."
        )
    if doc["paused"]:
        out.line(
            f'Paused: pipeline "{doc["pipeline"]}" is paused; the file would wait in '
            f"incoming/ until dropline resume {doc['pipeline']}, then go as above."
        )
    if doc["skipped"]:
        out.line(
            f"Skipped: {', '.join(doc['skipped'])} (try: skip, the default for command and "
            "python stages; one with no side effects can say try: run)"
        )


def _brief(metadata: dict[str, Any]) -> str:
    return " ".join(f"{k}={field_text(v)}" for k, v in metadata.items())


__all__ = ["collect", "render", "route"]
