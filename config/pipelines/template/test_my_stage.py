"""Testing a stage with pytest: build a StageContext around a real file, call the stage.

Run with: pytest /opt/automation/pipelines/<pipeline>/  (dropline's Python, so
`dropline` imports: /opt/automation/dropline/bin/python -m pytest ...).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from my_stage import Export, count_lines

from dropline.errors import PermanentError
from dropline.stages import StageContext


def context(path: Path, item_id: str = "01JD3Q6W5X0B8Z2Y7V4T9R1M0K") -> StageContext:
    return StageContext(
        item_id=item_id,
        path=path,
        name=path.name,
        pipeline="invoices",
        stage="export",
        attempt=1,
        log=structlog.get_logger(),
    )


def test_count_lines(tmp_path: Path) -> None:
    data = tmp_path / "invoice-1.csv"
    data.write_text("a,b\n1,2\n")
    assert count_lines(context(data)) == {"lines": 2}


def test_an_empty_file_fails_without_retries(tmp_path: Path) -> None:
    data = tmp_path / "invoice-2.csv"
    data.write_text("")
    with pytest.raises(PermanentError):
        count_lines(context(data))


def test_export_is_idempotent(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    data = tmp_path / "invoice-3.csv"
    data.write_text("a,b\n")
    stage = Export({"outbox": str(outbox)})
    first = stage(context(data))
    second = stage(context(data))  # the same item again: a retry, or after a crash
    assert first == second
    assert [p.name for p in outbox.iterdir()] == ["01JD3Q6W5X0B8Z2Y7V4T9R1M0K.txt"]
