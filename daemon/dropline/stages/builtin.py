"""Stages that ship with dropline, by name (``builtin: NAME`` with options under ``with:``).

Each builtin is a factory that reads its options through ``Options`` (so a
wrong option is a configuration error at start-up, naming file, line and
key) and returns the stage callable.  The heavier ones live in their own
modules and are imported only when a pipeline uses them.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import StageContext, StageFunc
from .options import Options


@dataclass(frozen=True)
class BuildEnv:
    """What a builtin may need from the configuration around it."""

    base: Path  # the configuration file's folder: relative option paths start there
    pipeline: str


@dataclass(frozen=True)
class BuiltStage:
    func: StageFunc
    modifies: bool = False  # rewrites the working file on purpose (archive keeps the result)


Factory = Callable[[Options, BuildEnv], "StageFunc | BuiltStage"]


def _sha256(opts: Options, env: BuildEnv) -> StageFunc:
    """Record the SHA-256 of the file in the metadata (key ``sha256`` or ``with: {key: K}``)."""
    key = opts.string("key", "sha256")
    opts.done()

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        digest = hashlib.sha256()
        with ctx.data_file().open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return {key: digest.hexdigest()}

    return stage


def _noop(opts: Options, env: BuildEnv) -> StageFunc:
    """Do nothing (useful to try routing)."""
    opts.done()

    def stage(ctx: StageContext) -> None:
        return None

    return stage


# name -> the factory, or "module:function" of a factory imported when first used.
BUILTINS: dict[str, Factory | str] = {
    "sha256": _sha256,
    "noop": _noop,
    "validate-csv": "dropline.stages.validate_csv:build",
    "validate-json": "dropline.stages.validate_json:build",
    "transform": "dropline.stages.transform:build",
    "sqlite-load": "dropline.stages.sqlite_load:build",
    "postgres-load": "dropline.stages.postgres_load:build",
    "publish": "dropline.stages.publish:build",
    "webhook": "dropline.stages.webhook:build",
}


def _factory(name: str) -> Factory:
    entry = BUILTINS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        factory: Factory = getattr(importlib.import_module(module), attr)
        return factory
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
    opts = Options(options, file=file, line=line, key=f"{key}.with", lines=lines)
    built = _factory(name)(opts, env or BuildEnv(Path(file).parent, ""))
    return built if isinstance(built, BuiltStage) else BuiltStage(built)


__all__ = ["BUILTINS", "BuildEnv", "BuiltStage", "build_builtin"]
