"""The state database's schema: its migrations, and the names of an item's states.

Only data lives here: the DDL of each schema version and the state names the
SQL of the other modules is built from.  A shipped migration is never edited.
"""

from __future__ import annotations

from enum import StrEnum

# Each entry takes the schema from version N to N+1.  Never edit a shipped
# entry; append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        name BLOB NOT NULL,              -- its name in incoming/ (bytes: need not be UTF-8)
        working_name BLOB NOT NULL,      -- its name in working/
        pipeline TEXT,                   -- NULL until routed, or when no pipeline matched
        state TEXT NOT NULL,             -- claiming, active, finishing, archived, failed, vanished
        size INTEGER,
        sha256 TEXT,
        src_dev INTEGER,
        src_ino INTEGER,
        next_stage INTEGER NOT NULL DEFAULT 0,   -- stages completed so far
        attempt INTEGER NOT NULL DEFAULT 0,      -- failed attempts of next_stage so far
        next_attempt_at REAL,                    -- when a retry is due (epoch seconds)
        metadata TEXT NOT NULL DEFAULT '{}',     -- JSON from earlier stages
        outcome TEXT,                    -- archived or failed, once decided
        reason TEXT,                     -- why it failed
        final_dir TEXT,                  -- '' or a date folder under archive/
        final_name BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX items_state ON items(state);
    CREATE INDEX items_name ON items(name);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        stage_index INTEGER NOT NULL,
        stage TEXT NOT NULL,
        attempt INTEGER NOT NULL,        -- 1 + the failed attempts before it
        started_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT,                    -- succeeded, retrying, failed, interrupted, indeterminate
        error TEXT
    );
    CREATE INDEX attempts_item ON attempts(item_id);
    -- Notable events beyond a file's ordinary life (recovery, vanished files):
    -- the claim and the end are in items, every stage attempt in attempts.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_item ON events(item_id);
    """,
    # 2: the change time recorded with the size after the claim, to notice a writer
    # that kept the file open (its owner can set mtime back, never ctime).
    """
    ALTER TABLE items ADD COLUMN ctime_ns INTEGER;
    """,
    # 3: the operations commands.  Finished rows by age (status, prune: never a
    # full-table scan as history grows; it also serves what items_state did);
    # requests from `dropline retry` to the running daemon.
    """
    DROP INDEX items_state;
    CREATE INDEX items_state_finished ON items(state, finished_at);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,              -- retry
        item_id TEXT NOT NULL,
        requested_at REAL NOT NULL,
        done_at REAL,
        result TEXT                      -- requeued, or why not
    );
    CREATE INDEX requests_open ON requests(id) WHERE done_at IS NULL;
    """,
    # 4: no index on the name.  Names come in no order, so each claim wrote a
    # leaf page of its own into that index: with a million rows recorded, 25 us
    # per file instead of 9, growing with the history.  The name is looked up
    # only by `dropline history NAME` and `dropline retry NAME`, which now read
    # the table through (about 0.1 s per million rows).
    """
    DROP INDEX items_name;
    """,
    # 5: each attempt's own duration, as the stage measured it (the log's
    # "seconds"); ended_at - started_at also counts the wait for a worker and
    # for the loop to record the end.
    """
    ALTER TABLE attempts ADD COLUMN seconds REAL;
    """,
    # 6: `dropline replay`: a request's argument (the stage to start from), and the
    # item a replay's item copies.  The index holds the replays' rows only (a
    # claim writes no entry in it).
    """
    ALTER TABLE requests ADD COLUMN detail TEXT;
    ALTER TABLE items ADD COLUMN replay_of TEXT;
    CREATE INDEX items_replay_of ON items(replay_of) WHERE replay_of IS NOT NULL;
    """,
    # 7: pipelines the operator paused (`dropline pause`), kept across restarts.
    """
    CREATE TABLE pauses (
        pipeline TEXT PRIMARY KEY,
        since REAL NOT NULL,
        reason TEXT
    );
    """,
    # 8: pipelines held by their breaker (a stage failing for every file), kept
    # across restarts with the delay of their next probe.
    """
    CREATE TABLE holds (
        pipeline TEXT PRIMARY KEY,
        stage TEXT NOT NULL,
        since REAL NOT NULL,
        reason TEXT NOT NULL,
        probe_delay REAL NOT NULL
    );
    """,
    # 9: the content of the files of pipelines that skip duplicates: the first item
    # of each SHA-256, per pipeline.  Written for those pipelines only (a claim
    # elsewhere pays nothing: an index on hashes costs a page write per file).
    """
    CREATE TABLE contents (
        pipeline TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        PRIMARY KEY (pipeline, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX contents_item ON contents(item_id);
    """,
)


class ItemState(StrEnum):
    """The ``state`` column of ``items``: where a file is in its life."""

    CLAIMING = "claiming"
    ACTIVE = "active"
    FINISHING = "finishing"
    # On its way back from failed/ to working/ (`dropline retry`).
    REQUEUING = "requeuing"
    # A copy of an archived file on its way into working/ as a new item (`dropline replay`).
    REPLAYING = "replaying"
    ARCHIVED = "archived"
    FAILED = "failed"
    VANISHED = "vanished"
    # Its files are being deleted for retention; the row goes next.
    PRUNING = "pruning"


UNFINISHED: tuple[str, ...] = (
    ItemState.CLAIMING,
    ItemState.ACTIVE,
    ItemState.FINISHING,
    ItemState.REQUEUING,
    ItemState.REPLAYING,
)
FINISHED: tuple[str, ...] = (ItemState.ARCHIVED, ItemState.FAILED, ItemState.VANISHED)


def sql_list(states: tuple[str, ...]) -> str:
    """STATES as the literals of an SQL ``IN (...)`` list: 'claiming', 'active', ..."""
    return ", ".join(f"'{s}'" for s in states)


__all__ = ["FINISHED", "MIGRATIONS", "UNFINISHED", "ItemState", "sql_list"]
