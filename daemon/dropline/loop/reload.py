"""Reading the configuration again (SIGHUP, ``dropline reload``): applied whole,
or refused whole with the previous one kept."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, check_paths, load_config
from ..config.host import check_host
from ..errors import ConfigError, DroplineError
from ..pipeline import Routes
from ..reloading import Verdict, restart_needed
from .context import LoopContext


@dataclass
class Reloaded:
    verdict: Verdict
    config: Config | None = None  # None: refused
    routes: Routes | None = None


def read_again(ctx: LoopContext, started: Config) -> Reloaded:
    """Read and check the file again; STARTED: what the daemon started with (what
    a reload cannot change is compared with it)."""
    current = ctx.config
    try:
        new = load_config(current.path)
        for key in ("data_dir", "state_db"):
            before, after = getattr(current, key), getattr(new, key)
            if after != before:
                raise ConfigError(
                    f"cannot change on reload (from {before} to {after}); restart dropline",
                    file=str(new.path),
                    line=new.lines.get(key, 0),
                    key=key,
                )
        check_paths(new)
        check_host(new)  # a folder named for duplicates that others may write: refused
        routes = Routes(new)
    except DroplineError as exc:
        ctx.log.error("config.rejected", error=str(exc), kept="the previous configuration")
        return Reloaded(Verdict(False, error=str(exc), config=str(current.path)))
    warnings = restart_needed(started, new)
    for key, warning in warnings:
        if key == "metrics":  # the event it has always had
            ctx.log.warning(
                "config.metrics_unchanged", detail="metrics change on restart", warning=warning
            )
        else:
            ctx.log.warning("config.restart_needed", key=key, warning=warning)
    names = tuple(p.name for p in routes.pipelines)
    ctx.log.info("daemon.reloaded", pipelines=list(names))
    verdict = Verdict(
        True, warnings=tuple(w for _, w in warnings), config=str(new.path), pipelines=names
    )
    return Reloaded(verdict, new, routes)
