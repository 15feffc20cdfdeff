"""Building a builtin stage and a StageContext around a real file, as the daemon would."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from dropline.stages import StageContext
from dropline.stages.builtin import BuildEnv, BuiltStage, build_builtin

ITEM = "01JD3Q6W5X0B8Z2Y7V4T9R1M0K"


def build(name: str, options: Mapping[str, Any], base: Path | None = None) -> BuiltStage:
    """The builtin NAME with OPTIONS, as declared on line 7 of /etc/dropline/dropline.yaml."""
    return build_builtin(
        name,
        options,
        file="/etc/dropline/dropline.yaml",
        line=7,
        key="pipelines[0].stages[1]",
        lines={},
        env=BuildEnv(base or Path("/etc/dropline"), "test"),
    )


def context(
    path: Path,
    *,
    item_id: str = ITEM,
    metadata: Mapping[str, Any] | None = None,
    scratch: Path | None = None,
) -> StageContext:
    return StageContext(
        item_id=item_id,
        path=path,
        name=path.name,
        pipeline="test",
        stage="stage",
        attempt=1,
        metadata=dict(metadata or {}),
        log=structlog.get_logger(),
        timeout=30.0,
        scratch=scratch or path.parent / "scratch" / item_id,
    )


def run(stage: BuiltStage, ctx: StageContext) -> dict[str, Any]:
    result = stage.func(ctx)
    return dict(result or {})
