"""``dropline pause PIPELINE`` and ``dropline resume PIPELINE``.

Applied by the running daemon, which stops or starts taking the pipeline's
files at once and logs the change; when none runs, written here (the daemon
reads it when it starts).  Either way the pause is a row of the state
(``state/pauses.py``): it lasts until ``resume``, across restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import console as c
from ..config import Config
from ..errors import ConfigError
from ..loop.gates import RESUME, apply
from ..state import ItemLog, PauseRows
from .handoff import hand_off

if TYPE_CHECKING:
    from ..pipeline import Routes
    from ..spool import Spool


def run(config: Config, kind: str, pipeline: str, reason: str, wait: float) -> dict[str, Any]:
    """Pause (KIND "pause") or resume PIPELINE; what happened, as one document."""
    names = [p.name for p in config.pipelines]
    if pipeline not in names and not (kind == RESUME and pipeline in (read_paused(config) or {})):
        # (A pipeline paused, then taken out of the configuration, can be resumed.)
        listed = ", ".join(names) or "none"
        raise ConfigError(f'no pipeline "{pipeline}" (pipelines: {listed})')

    def offline(
        items: ItemLog, spool: Spool, routes: Routes, ids: list[str], now: float, _: set[bytes]
    ) -> dict[str, str]:
        rows = PauseRows(items.db)
        with items.db.transaction():
            return {p: apply(rows, kind, p, now, reason) for p in ids}

    mode, answers = hand_off(config, kind, [pipeline], wait, offline, detail=reason or None)
    answer = answers[pipeline] or "pending"
    return {
        "pipeline": pipeline,
        "applied_by": mode,
        "result": answer,
        # Whether it is paused now (null while the daemon has not answered).
        "paused": {"paused": True, "already paused": True}.get(
            answer, None if answer == "pending" else False
        ),
    }


def read_paused(config: Config) -> dict[str, tuple[float, str]] | None:
    """The paused pipelines, (since, reason) each; None when there is no state to read."""
    from ..errors import StateUnavailableError
    from ..state import StateReader, paused_pipelines

    try:
        with StateReader(config.state_db) as reader:
            return paused_pipelines(reader)
    except StateUnavailableError:
        return None


def render(doc: dict[str, Any], out: c.Console) -> None:
    pipeline, result = doc["pipeline"], doc["result"]
    if result == "pending":
        out.line(
            f"Pending: the daemon has not answered yet; the request stays queued and is "
            f'applied when it gets to it (dropline status says whether "{pipeline}" is paused).'
        )
        return
    said = {
        "paused": f'Paused "{pipeline}": its files wait in incoming/ (or in working/, '
        "their stages not started) until dropline resume.",
        "already paused": f'"{pipeline}" was paused already; it stays paused.',
        "resumed": f'Resumed "{pipeline}": its files go on.',
        "not paused": f'"{pipeline}" was not paused; nothing changed.',
    }
    out.line(said.get(result, result))
    if doc["applied_by"] == "offline":
        out.line("(no daemon runs: the daemon reads it when it starts)")


__all__ = ["read_paused", "render", "run"]
