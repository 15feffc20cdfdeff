"""Operators' own stages: ``python: "module:function"``.

Resolved at start-up (a stage that cannot be imported is a configuration
error there, not a crash on the first file) from the pipeline's folder
``<pipelines_dir>/<pipeline>/`` and from ``<pipelines_dir>/`` itself.  A
class is instantiated once with the ``with:`` options; a function is called
as is.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import StageFunc


def load_python_stage(
    ref: str,
    options: Mapping[str, Any],
    search: list[Path],
    *,
    file: str,
    line: int,
    key: str,
) -> StageFunc:
    """Import REF ("package.module:attribute") and return the stage callable."""
    module_name, _, attr = ref.partition(":")
    for folder in reversed(search):
        text = str(folder)
        if folder.is_dir() and text not in sys.path:
            sys.path.insert(0, text)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time error is the operator's to see
        where = ", ".join(str(p) for p in search)
        raise ConfigError(
            f'cannot import module "{module_name}" (searched {where} and the Python path): '
            f"{type(exc).__name__}: {exc}",
            file=file,
            line=line,
            key=key,
        ) from None
    target = getattr(module, attr, None)
    if target is None:
        raise ConfigError(
            f'module "{module_name}" has no attribute "{attr}"', file=file, line=line, key=key
        )
    if isinstance(target, type):
        try:
            target = target(dict(options))
        except Exception as exc:  # noqa: BLE001 - the operator's constructor
            raise ConfigError(
                f"{ref}({json.dumps(dict(options), default=str)}) failed: "
                f"{type(exc).__name__}: {exc}",
                file=file,
                line=line,
                key=key,
            ) from None
    elif options:
        raise ConfigError(
            f'"with:" options need a class stage; "{ref}" is a function',
            file=file,
            line=line,
            key=key,
        )
    if not callable(target):
        raise ConfigError(f'"{ref}" is not callable', file=file, line=line, key=key)
    func: StageFunc = target
    return func
