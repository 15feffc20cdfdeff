"""What a reload can apply, what it cannot, and the verdict the daemon gives.

The daemon reads its file again on SIGHUP and for each request `dropline
reload` leaves in the state database.  A file it refuses leaves the running
configuration in place; a file it takes may still hold changes that only a
restart applies (the worker threads, the log set-up, the metrics endpoint,
modules already imported): those are named in warnings, never ignored
silently.  The verdict travels back to the command as one JSON text in the
request's ``result``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .config import Config, MetricsConfig
from .errors import ConfigError

KIND = "reload"  # requests.kind of the rows `dropline reload` leaves


@dataclass(frozen=True)
class Verdict:
    """How a reload went: applied (perhaps with warnings) or refused (with the error)."""

    applied: bool
    error: str = ""
    warnings: tuple[str, ...] = ()
    config: str = ""
    pipelines: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "applied": self.applied,
                "error": self.error,
                "warnings": list(self.warnings),
                "config": self.config,
                "pipelines": list(self.pipelines),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        """The verdict in a request's result; anything else (a daemon that did not
        understand the request, say) is a refusal that quotes it."""
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("applied"), bool):
            return cls(False, error=f"the daemon answered: {text}")
        return cls(
            doc["applied"],
            str(doc.get("error") or ""),
            tuple(str(w) for w in doc.get("warnings") or ()),
            str(doc.get("config") or ""),
            tuple(str(p) for p in doc.get("pipelines") or ()),
        )


def _metrics_text(metrics: MetricsConfig | None) -> str:
    if metrics is None:
        return "none"
    parts = [f"listen {metrics.address}"] if metrics.listen else []
    if metrics.textfile is not None:
        parts.append(f"textfile {metrics.textfile}")
    return ", ".join(parts) or "none"


def restart_needed(running: Config, new: Config) -> list[tuple[str, str]]:
    """(key, warning) for each change in NEW that a reload cannot apply.

    RUNNING is the configuration the daemon started with: what these keys
    still are, however many reloads came since (so a change is named at every
    reload until a restart applies it).  The warning has the one-line form of
    a configuration error: file, line, key, what.
    """
    changes: list[tuple[str, str, str]] = []
    if new.workers != running.workers:
        changes.append(("workers", str(running.workers), str(new.workers)))
    if new.log_format != running.log_format:
        changes.append(("log_format", running.log_format, new.log_format))
    if new.pipelines_dir != running.pipelines_dir:
        # Stages resolve in the new folder, but modules already imported stay loaded.
        changes.append(("pipelines_dir", str(running.pipelines_dir), str(new.pipelines_dir)))
    if new.metrics != running.metrics:
        changes.append(("metrics", _metrics_text(running.metrics), _metrics_text(new.metrics)))
    out = []
    for key, before, after in changes:
        what = (
            f"changed from {before} to {after}, which a reload cannot apply; "
            "it applies at the next start (restart dropline)"
        )
        if before == after:  # the same text, a difference in the details (interval, say)
            what = "changed, which a reload cannot apply; it applies at the next start"
        text = str(ConfigError(what, file=str(new.path), line=new.lines.get(key, 0), key=key))
        out.append((key, text))
    return out


__all__ = ["KIND", "Verdict", "restart_needed"]
