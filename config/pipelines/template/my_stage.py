"""A template for your own stage: copy this folder to /opt/automation/pipelines/<pipeline>/.

Route files to it in /etc/dropline/dropline.yaml:

    pipelines:
      - name: invoices
        match: "invoice-*.csv"
        stages:
          - name: export
            python: "my_stage:Export"          # module:callable, from this folder
            with: {outbox: /srv/exports}       # options: only for a class
            timeout: 60s
            retries: 3

How dropline calls it:
- a function ``f(ctx)`` or a class ``C(options)`` built once at start-up and
  then called as ``c(ctx)``; ``dropline check`` imports it, so a typo is a
  configuration error at start-up, not a crash on the first file;
- ``ctx`` (dropline.stages.StageContext): ``item_id`` (stable across retries
  and restarts: the idempotency key), ``path`` (the file in working/; read
  it, do not move it), ``data_file()`` (the file to read: a transform's
  output when an earlier stage made one), ``name`` (its name in incoming/),
  ``pipeline``, ``stage``, ``attempt`` (1, 2, ...), ``metadata`` (what the
  stages before returned), ``log`` (a structlog logger: ``ctx.log.info
  ("event.name", key=value)``), ``timeout``, ``scratch_dir()`` (a folder of
  this item's own, removed when it ends);
- return a mapping (JSON-serialisable) to pass on, or None;
- raise ``dropline.errors.PermanentError`` when the file itself is bad (it
  fails at once, no retries); any other exception is retried with backoff;
- it runs in a worker process of its own (``isolation: process``), killed
  at its timeout; a crash of dropline may run it again for the same file:
  make it idempotent with ``ctx.item_id``, as below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dropline.errors import PermanentError


def count_lines(ctx: Any) -> Mapping[str, Any]:
    """A function stage: how many lines the file has."""
    with ctx.data_file().open("rb") as f:
        lines = sum(1 for _ in f)
    if lines == 0:
        raise PermanentError("the file is empty")
    return {"lines": lines}


class Export:
    """A class stage with options: write a summary into an outbox, once per item.

    Idempotent: the summary's name is the item id, written to a temporary
    name and renamed into place, so a second run for the same item (a retry,
    or a run after a crash) replaces it with the same content instead of
    adding a second one.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.outbox = Path(options["outbox"])
        if not self.outbox.is_dir():
            raise ValueError(f"outbox {self.outbox} is not a folder")

    def __call__(self, ctx: Any) -> Mapping[str, Any]:
        size = ctx.data_file().stat().st_size
        target = self.outbox / f"{ctx.item_id}.txt"
        tmp = self.outbox / f".{ctx.item_id}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(f"{ctx.name}\t{size}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
        ctx.log.info("export.written", to=str(target))
        return {"exported": str(target)}
