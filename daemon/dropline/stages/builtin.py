"""Stages that ship with dropline, by name (``builtin: NAME`` with options under ``with:``).

Each builtin declares its options as a frozen dataclass, each key once with
its check and default (as the configuration does), and a factory that takes
them built, with their Loc for its own checks, and returns the stage callable.
The options are built by the configuration's own walker (config/load.py), so a
wrong option is a configuration error at start-up with the same wording,
naming file, exact line and key.  The heavier ones live in their own
modules and are imported only when a pipeline uses them.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.keys import key
from ..config.load import build
from ..config.source import Loc, Source
from ..config.values import Text
from ..errors import ConfigError
from . import StageContext, StageFunc


@dataclass(frozen=True)
class BuildEnv:
    """What a builtin may need from the configuration around it."""

    base: Path  # the configuration file's folder: relative option paths start there
    pipeline: str


@dataclass(frozen=True)
class BuiltStage:
    func: StageFunc
    modifies: bool = False  # rewrites the working file on purpose (archive keeps the result)


# The factory: the built options, where they are written, what is around them.
Factory = Callable[[Any, Loc, BuildEnv], "StageFunc | BuiltStage"]


@dataclass(frozen=True)
class Sha256Options:
    key: str = key(Text("a string"), default="sha256")  # the metadata key of the digest


def _sha256(opts: Sha256Options, at: Loc, env: BuildEnv) -> StageFunc:
    """Record the SHA-256 of the file in the metadata (key ``sha256`` or ``with: {key: K}``)."""
    name = opts.key

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        digest = hashlib.sha256()
        with ctx.data_file().open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return {name: digest.hexdigest()}

    return stage


@dataclass(frozen=True)
class NoOptions:
    pass


def _noop(opts: NoOptions, at: Loc, env: BuildEnv) -> StageFunc:
    """Do nothing (useful to try routing)."""

    def stage(ctx: StageContext) -> None:
        return None

    return stage


# name -> (its options, its factory), or the module of one imported when first used,
# which holds both as Options and build.
BUILTINS: dict[str, tuple[type[Any], Factory] | str] = {
    "sha256": (Sha256Options, _sha256),
    "noop": (NoOptions, _noop),
    "validate-csv": "dropline.stages.validate_csv",
    "validate-json": "dropline.stages.validate_json",
    "transform": "dropline.stages.transform",
    "sqlite-load": "dropline.stages.sqlite_load",
    "postgres-load": "dropline.stages.postgres_load",
    "publish": "dropline.stages.publish",
    "webhook": "dropline.stages.webhook",
}


def _factory(name: str) -> tuple[type[Any], Factory]:
    entry = BUILTINS[name]
    if isinstance(entry, str):
        module = importlib.import_module(entry)
        return module.Options, module.build
    return entry


def build_builtin(
    name: str,
    options: Mapping[str, Any],
    *,
    file: str,
    line: int,
    key: str,
    lines: Mapping[str, int] | None = None,
    env: BuildEnv | None = None,
) -> BuiltStage:
    """The stage for builtin NAME, its options checked.  KEY: the stage's dotted key."""
    if name not in BUILTINS:
        allowed = ", ".join(sorted(BUILTINS))
        raise ConfigError(
            f'unknown builtin "{name}"; allowed: {allowed}',
            file=file,
            line=line,
            key=f"{key}.builtin",
        )
    env = env or BuildEnv(Path(file).parent, "")
    at = Loc(_option_source(file, env.base, line, f"{key}.with", lines or {}), f"{key}.with")
    options_class, factory = _factory(name)
    built = factory(build(options_class, dict(options), at), at, env)
    return built if isinstance(built, BuiltStage) else BuiltStage(built)


def _option_source(file: str, base: Path, line: int, at: str, lines: Mapping[str, int]) -> Source:
    """The lines of the options (as StageConfig.option_lines has them) under their full keys.

    An option not written (a missing one) takes the line of the stage.
    """
    source = Source(file, base)
    source.lines[at] = line
    for path, option_line in lines.items():
        full = f"{at}{path}" if path.startswith("[") else f"{at}.{path}"
        source.lines[full] = source.key_lines[full] = option_line
    return source


__all__ = ["BUILTINS", "BuildEnv", "BuiltStage", "build_builtin"]
