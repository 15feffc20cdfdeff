"""What a journal entry says to a person (MESSAGE) and which kind it is (MESSAGE_ID).

The fields of an event stay journal fields of their own (ITEM, FILE, ...);
MESSAGE is one readable sentence built from the few that matter, such as
``archived orders-7.csv to archive/2026-11-28/orders-7.csv (pipeline reports)``.

MESSAGE_ID is systemd's way to name a kind of entry (``journalctl
MESSAGE_ID=...``, catalogs): 128 bits written as 32 lowercase hex digits.
dropline derives it from the event's name, ``uuid5(NAMESPACE, name).hex``,
so it never changes while the name does not, needs no table to keep up to
date, and any tool can compute it (``python3 -c "import uuid;
print(uuid.uuid5(uuid.UUID('a3a108f1-3ff2-4b57-af60-ac4ae59338e5'),
'file.archived').hex)"``).
"""

from __future__ import annotations

import functools
import posixpath
import uuid
from collections.abc import Callable, Mapping
from typing import Any

# Fixed for ever: changing it would change every MESSAGE_ID.
NAMESPACE = uuid.UUID("a3a108f1-3ff2-4b57-af60-ac4ae59338e5")


@functools.lru_cache(maxsize=256)
def message_id(event: str) -> str:
    """The MESSAGE_ID of EVENT: 32 lowercase hex digits, the same in every release."""
    return uuid.uuid5(NAMESPACE, event).hex


class _Fields(dict[str, Any]):
    """A template's view of the fields: a missing one reads as "?" rather than raising."""

    def __missing__(self, key: str) -> str:
        return "?"


def _stage_failed(f: Mapping[str, Any]) -> str:
    return f"stage {f['stage']} failed on {f['file']} ({f.get('kind', 'failed')}): {f['error']}"


def _file_failed(f: Mapping[str, Any]) -> str:
    return f"failed {f['file']}, moved to failed/{f['to']}: {f['reason']}"


# Events of files first (most of the journal), then the daemon's.  An event not
# named here (a stage's own, say) reads as its name and its main detail.
_TEMPLATES: dict[str, str | Callable[[Mapping[str, Any]], str]] = {
    "file.claimed": "claimed {file} ({size} bytes) for pipeline {pipeline}",
    "file.archived": lambda f: (
        # "to" is relative to archive/; "../duplicates/..." is the folder named for duplicates
        f"archived {f['file']} to {posixpath.normpath('archive/' + str(f['to']))} "
        f"(pipeline {f['pipeline']})"
    ),
    "file.failed": _file_failed,
    "file.vanished": "{file} vanished: no longer where dropline left it",
    "file.busy": "{file} is still being written; put back",
    "file.requeued": "retrying {file} (pipeline {pipeline})",
    "marker.orphaned": "marker {file} has no file {waits_for} beside it after {seconds} s",
    "file.duplicate": "{file} is a duplicate of item {first} (pipeline {pipeline}): ended unrun",
    "file.replayed": "replaying {file} as a new item of pipeline {pipeline}",
    "stage.started": "stage {stage} started on {file} (attempt {attempt})",
    "stage.succeeded": "stage {stage} succeeded on {file} in {seconds} s",
    "stage.retrying": "stage {stage} failed on {file} (attempt {attempt} of {of}), "
    "retrying in {delay} s: {error}",
    "stage.failed": _stage_failed,
    "stage.interrupted": "stage {stage} on {file} interrupted by the stop; it runs again",
    "entry.refused": "refused {file}: {reason}",
    "folder.found": "folder {file} dropped into incoming/: its files are processed",
    "folder.removed": "folder {file} removed from incoming/ ({detail})",
    "pipeline.paused": lambda f: (
        f"pipeline {f['pipeline']} paused: its files wait until dropline resume"
        + (f" ({f['reason']})" if f.get("reason") else "")
    ),
    "pipeline.resumed": "pipeline {pipeline} resumed: its files go on",
    "pipeline.held": "pipeline {pipeline} held at stage {stage}: {reason}",
    "pipeline.probe_failed": "pipeline {pipeline} still held: {error}",
    "pipeline.released": "pipeline {pipeline} released: stage {stage} works again",
    "stage.held": "stage {stage} on {file} not counted (its pipeline is held or paused): {error}",
    "daemon.ready": "ready: watching {data_dir}/incoming ({resumed} files resumed)",
    "daemon.reloading": "reloading the configuration {config}",
    "daemon.reloaded": "configuration reloaded",
    "daemon.stopping": "stopping ({in_flight} stages running)",
    "daemon.stopped": "stopped ({archived} archived, {failed} failed since the database began)",
    "daemon.failed": "failed: {error}",
    "daemon.abandoned": "stopped with {stages} stages still running (they run again)",
    "config.rejected": "configuration rejected, {kept} kept: {error}",
    "config.metrics_unchanged": "metrics settings unchanged: {detail}",
    "scan.completed": "scan of incoming/ completed ({entries} entries)",
    "scan.started": "rescanning incoming/ ({reason})",
    "scan.overflow": "inotify queue overflowed; rescanning incoming/",
    "scan.needed": "rescanning incoming/: {detail}",
    "watch.failed": "the watch on incoming/ failed: {reason}",
    "watch.restored": "the watch on incoming/ is back (generation {generation})",
    "thread.failed": "thread {thread} ended with an error: {error}",
    "disk.low": "{action}: {problem}",
    "disk.full": "{action}: {error}",
    "disk.ok": "{action}: space again",
    "journal.behind": "journald is not reading: {action} ({pending} entries waiting)",
    "journal.caught_up": "journald reads again: {action}",
    "journal.dropped": "{dropped} journal entries were dropped while journald was not reading "
    "({ends} of them ends of files)",
}

_DETAILS = ("error", "reason", "detail", "problem")


def describe(event: str, fields: Mapping[str, Any]) -> str:
    """MESSAGE for EVENT: one sentence, not every field (those are fields of their own)."""
    template = _TEMPLATES.get(event)
    if callable(template):
        return template(_Fields(fields))
    if template is not None:
        return template.format_map(_Fields(fields))
    text = event
    if fields.get("file") is not None:
        text += f" {fields['file']}"
    for key in _DETAILS:
        if fields.get(key) is not None:
            return f"{text}: {fields[key]}"
    return text
