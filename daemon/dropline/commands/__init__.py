"""The operator's commands beside ``run`` and ``check``: one module each.

Each has ``collect`` (the facts, as one JSON-ready document) and ``render``
(the same for people), so ``--json`` and the console never disagree.
"""

from __future__ import annotations

import time
from datetime import datetime

from ..errors import ConfigError
from ..units import parse_duration


def parse_since(text: str, now: float | None = None, option: str = "--since") -> float:
    """--since (or OPTION): a duration back from now ("2h", "1d") or a local date/time
    ("2026-11-28")."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f'{option}: "{text}" is neither a duration (such as 2h or 3d) '
            "nor a date or time (such as 2026-11-28 or 2026-11-28T14:00)"
        ) from None


__all__ = ["parse_since"]
