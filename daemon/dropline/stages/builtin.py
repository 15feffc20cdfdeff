"""Stages that ship with dropline, by name (``builtin: NAME`` with options under ``with:``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from . import StageContext, StageFunc


def _sha256(options: Mapping[str, Any]) -> StageFunc:
    """Record the SHA-256 of the file in the metadata (key ``sha256`` or ``with: {key: K}``)."""
    key = str(options.get("key", "sha256"))

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        digest = hashlib.sha256()
        with ctx.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return {key: digest.hexdigest()}

    return stage


def _noop(options: Mapping[str, Any]) -> StageFunc:
    """Do nothing (useful to try routing)."""

    def stage(ctx: StageContext) -> None:
        return None

    return stage


BUILTINS: dict[str, tuple[Callable[[Mapping[str, Any]], StageFunc], frozenset[str]]] = {
    "sha256": (_sha256, frozenset({"key"})),
    "noop": (_noop, frozenset()),
}


def build_builtin(
    name: str, options: Mapping[str, Any], *, file: str, line: int, key: str
) -> StageFunc:
    """The stage function for builtin NAME, its options checked."""
    if name not in BUILTINS:
        allowed = ", ".join(sorted(BUILTINS))
        raise ConfigError(
            f'unknown builtin "{name}"; allowed: {allowed}', file=file, line=line, key=key
        )
    factory, known = BUILTINS[name]
    unknown = sorted(set(options) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f'builtin "{name}" has no option "{unknown[0]}"; allowed: {allowed}',
            file=file,
            line=line,
            key=key,
        )
    return factory(options)
