"""validate-json: JSON documents and JSON Lines against a JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import ConfigError, PermanentError

from .builtin_helpers import build, context, run

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "items"],
    "properties": {
        "id": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["price"],
                "properties": {"price": {"type": "number"}, "sku/code": {"type": "string"}},
            },
        },
    },
}


def test_json_document_good_and_bad(tmp_path: Path) -> None:
    stage = build("validate-json", {"schema": SCHEMA})
    good = tmp_path / "order.json"
    good.write_text(json.dumps({"id": 1, "items": [{"price": 2.5}]}))
    assert run(stage, context(good)) == {"documents": 1, "format": "json"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "x", "items": [{"price": "abc"}, {"sku/code": 5}]}))
    with pytest.raises(PermanentError) as caught:
        run(stage, context(bad))
    assert str(caught.value).split("; ") == [
        "/id: 'x' is not of type 'integer'",
        "/items/0/price: 'abc' is not of type 'number'",
        "/items/1: 'price' is a required property",
        "/items/1/sku~1code: 5 is not of type 'string'",
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PermanentError, match="not valid JSON"):
        run(stage, context(broken))


def test_json_lines_name_the_line(tmp_path: Path) -> None:
    schema_file = tmp_path / "order.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    stage = build("validate-json", {"schema": "order.schema.json", "max_errors": 2}, base=tmp_path)
    lines = tmp_path / "orders.jsonl"
    lines.write_text(
        "\n".join(
            [
                json.dumps({"id": 1, "items": []}),
                "",
                json.dumps({"id": 2, "items": [{"price": "x"}]}),
                json.dumps({"id": 3}),
                json.dumps({"id": "4", "items": []}),
            ]
        )
        + "\n"
    )
    with pytest.raises(PermanentError) as caught:
        run(stage, context(lines))
    message = str(caught.value)
    assert message.startswith(
        "line 3, /items/0/price: 'x' is not of type 'number'; "
        "line 4, /: 'items' is a required property"
    ), message
    assert message.endswith("and more errors after these 2 (max_errors)")
    fine = tmp_path / "fine.ndjson"
    fine.write_text(json.dumps({"id": 1, "items": []}) + "\n" + "{oops\n")
    with pytest.raises(PermanentError, match="line 2: not valid JSON"):
        run(stage, context(fine))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, 'missing required key "schema"'),
        ({"schema": "missing.json"}, "cannot read"),
        ({"schema": {"type": "nonsense"}}, "not a valid JSON Schema"),
        ({"schema": SCHEMA, "format": "xml"}, 'expected one of "auto", "json", "jsonl"'),
    ],
)
def test_bad_schema_is_a_config_error(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build("validate-json", options, base=tmp_path)
    assert message in str(caught.value)
    assert "pipelines[0].stages[1].with." in str(caught.value)
