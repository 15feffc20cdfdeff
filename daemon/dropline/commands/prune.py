"""``dropline prune``: retention for archive/ (and failed/) and the state database."""

from __future__ import annotations

import time
from typing import Any

from .. import console as c
from ..config import Config
from ..lifecycle.retention import PruneReport, plan, prune
from ..spool import Spool
from ..state import Database, Pruning


def run(config: Config, older_than: float, dry_run: bool, include_failed: bool) -> dict[str, Any]:
    now = time.time()
    before = now - older_than
    if not config.state_db.exists():
        # Before the daemon's first run (the timer may fire first): nothing is recorded,
        # so nothing is dropline's to delete; the database is not created here.
        doc = _doc(PruneReport(), before, dry_run, include_failed)
        doc["note"] = "no state database yet"
        doc["state_db"] = str(config.state_db)
        return doc
    db = Database(config.state_db)
    try:
        if dry_run:
            report = plan(Pruning(db), before, include_failed)
        else:
            spool = Spool(
                config.data_dir, max_file_size=config.max_file_size, layout=config.archive_layout
            )
            try:
                outside = tuple(config.end_folders)  # the folders named for duplicates
                report = prune(Pruning(db), spool, before, include_failed, now, outside)
            finally:
                spool.close()
    finally:
        db.close()
    return _doc(report, before, dry_run, include_failed)


def _doc(report: PruneReport, before: float, dry_run: bool, include_failed: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "before": c.iso(before),
        "include_failed": include_failed,
        "archived": report.archived,
        "failed": report.failed,
        "vanished": report.vanished,
        "bytes": report.bytes,
        "date_folders_removed": report.days_removed,
        "requests_removed": report.requests,
    }


def render(doc: dict[str, Any], out: c.Console) -> None:
    if doc.get("note"):
        out.line(f"Nothing to prune: {doc['note']} ({doc.get('state_db', 'state_db')}).")
        return
    verb = "Would delete" if doc["dry_run"] else "Deleted"
    kinds = f"{doc['archived']:,} archived"
    if doc["include_failed"]:
        kinds += f" and {doc['failed']:,} failed"
    out.line(
        f"{verb} {kinds} files ({c.size(doc['bytes'])}) finished before "
        f"{c.stamp(c.parse_iso(doc['before']))}, with their history"
        + (f", and {doc['vanished']:,} records of vanished files" if doc["vanished"] else "")
        + "."
    )
    if not doc["include_failed"]:
        out.line("failed/ kept (add --failed to prune it too).")


__all__ = ["render", "run"]
