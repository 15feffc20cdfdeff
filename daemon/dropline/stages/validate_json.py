"""``builtin: validate-json``: JSON documents and JSON Lines against a JSON Schema.

Through the maintained ``jsonschema`` library (the schema's own ``$schema``
picks the draft; 2020-12 when it names none).  The schema is read and
checked once, at start-up: a schema that is not valid is a configuration
error.  Every error names where it is, up to ``max_errors``::

    line 3, /items/0/price: 'abc' is not of type 'number'

(the line only for JSON Lines; the JSON pointer always).  A JSON document is
parsed whole, so ``max_size`` bounds it; JSON Lines are streamed, one line
at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.keys import key
from ..config.source import Loc
from ..config.values import Anything, Choice, IntRange, Size
from ..errors import PermanentError
from . import StageContext, StageFunc
from .builtin import BuildEnv

_FORMATS = ("auto", "json", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _pointer(path: Any) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/"


@dataclass(frozen=True)
class Options:
    schema: object = key(Anything())  # a file (relative to the configuration) or inline
    format: str = key(Choice(_FORMATS), default="auto")
    max_errors: int = key(IntRange(1, 10_000), default=20)
    max_size: int = key(Size(), default=64 * 1024**2)


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    import jsonschema

    raw = opts.schema
    if isinstance(raw, str):
        path = Path(raw) if Path(raw).is_absolute() else env.base / raw
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            at.fail("schema", f"cannot read {path}: {exc.strerror}")
        except ValueError as exc:
            at.fail("schema", f"{path} is not valid JSON: {exc}")
    elif isinstance(raw, Mapping):
        schema = json.loads(json.dumps(raw))
    else:
        at.fail("schema", "expected a file name or an inline schema (a mapping)")
    if not isinstance(schema, dict):
        at.fail("schema", "a JSON Schema is an object")
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at.fail("schema", f"not a valid JSON Schema: {exc.message} at {_pointer(exc.path)}")
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    fmt, max_errors, max_size = opts.format, opts.max_errors, opts.max_size

    def documents(path: Path, lines: bool) -> Iterator[tuple[int | None, Any]]:
        if not lines:
            try:
                yield None, json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                raise PermanentError(f"not valid JSON: {exc}") from None
            return
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise PermanentError(f"line {number}: not valid JSON: {exc}") from None

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        path = ctx.data_file()
        lines = fmt == "jsonl" or (fmt == "auto" and ctx.name.lower().endswith(_JSONL_SUFFIXES))
        if not lines and path.stat().st_size > max_size:
            raise PermanentError(f"the document is larger than max_size ({max_size} bytes)")
        errors: list[str] = []
        more = False
        count = 0
        for number, doc in documents(path, lines):
            count += 1
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                where = f"line {number}, " if number is not None else ""
                if len(errors) >= max_errors:
                    more = True
                    break
                errors.append(f"{where}{_pointer(err.absolute_path)}: {err.message}")
            if more:
                break
        if errors:
            text = "; ".join(errors)
            if more:
                text += f"; and more errors after these {len(errors)} (max_errors)"
            raise PermanentError(text)
        return {"documents": count, "format": "jsonl" if lines else "json"}

    return stage


__all__ = ["build"]
