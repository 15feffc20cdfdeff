"""The state database: SQLite, the log of dropline's intentions and of every attempt.

The folders are the truth; this is the record of what dropline meant to do
and did, so that start-up recovery can reconcile the two.  ``db`` owns the
connection, transactions, migrations and the lock; ``items``, ``requests``
and ``pruning`` put their SQL through one ``Database``; ``reader`` is the
read-only view of the commands.  No SQL lives outside this package, and
nothing here knows about files.
"""

from __future__ import annotations

from .contents import ContentRows
from .db import Database, acquire_lock
from .holds import HoldRow, HoldRows
from .items import ItemLog, ItemRow, OpenAttempt
from .pauses import PauseRows
from .pruning import Pruning
from .reader import (
    AttemptView,
    EventView,
    ItemView,
    StateReader,
    daemon_pid,
    held_pipelines,
    paused_pipelines,
)
from .replays import ReplayRows
from .requests import RequestQueue
from .schema import FINISHED, MIGRATIONS, UNFINISHED, ItemState
from .search import ItemQuery

__all__ = [
    "FINISHED",
    "MIGRATIONS",
    "UNFINISHED",
    "AttemptView",
    "ContentRows",
    "Database",
    "EventView",
    "HoldRow",
    "HoldRows",
    "ItemLog",
    "ItemQuery",
    "ItemRow",
    "ItemState",
    "ItemView",
    "OpenAttempt",
    "PauseRows",
    "Pruning",
    "ReplayRows",
    "RequestQueue",
    "StateReader",
    "acquire_lock",
    "daemon_pid",
    "held_pipelines",
    "paused_pipelines",
]
