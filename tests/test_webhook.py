"""builtin: webhook, against a real HTTP server on 127.0.0.1 that records what it gets.

The server answers from a script (one entry per request: a status, or
"sleep" to answer later than the stage's timeout); each test uses short
timeouts and backoffs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import ConfigError, PermanentError
from dropline.ids import new_item_id
from dropline.stages import FAILURE, StageContext, StageFunc
from dropline.stages.builtin import build_builtin
from dropline.stages.webhook import BODY_CAP, DeliveryError

from .http_recorder import Script

KEY = "pipelines[1].on_failure[0]"
FAST = {"backoff": "10ms", "timeout": "2s"}


def build(options: dict[str, Any], lines: dict[str, int] | None = None) -> StageFunc:
    return build_builtin(
        "webhook", options, file="/etc/dropline/dropline.yaml", line=40, key=KEY, lines=lines
    ).func


def context(
    tmp_path: Path,
    metadata: dict[str, Any] | None = None,
    cancel: threading.Event | None = None,
    name: str = "report.csv",
) -> StageContext:
    path = tmp_path / "working" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"id,amount\n1,2\n")
    return StageContext(
        item_id=new_item_id(),
        path=path,
        name=name,
        pipeline="reports",
        stage="notify",
        attempt=1,
        metadata=metadata or {},
        cancel=cancel,
    )


# --- delivery and retries --------------------------------------------------------------


def test_two_503s_then_success(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [503, 503, 200]
    ctx = context(tmp_path, {"rows": 1, "sha256": "ab" * 32})
    started = time.monotonic()
    assert build({"url": url, **FAST})(ctx) == {"webhook_status": 200}
    assert time.monotonic() - started < 2
    assert len(script.received) == 3
    assert {r.headers["Idempotency-Key"] for r in script.received} == {f"{ctx.item_id}-notify"}
    assert {r.body for r in script.received} == {script.received[0].body}  # the same each time
    first = script.received[0]
    assert first.path == "/hooks/dropline"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"].startswith("dropline/")
    body = first.json()
    assert set(body) == {
        "item_id", "name", "pipeline", "rows", "outcome", "error", "stage", "sha256", "size", "at"
    }  # fmt: skip
    assert body["item_id"] == ctx.item_id
    assert body["name"] == "report.csv"
    assert body["pipeline"] == "reports"
    assert body["rows"] == 1
    assert body["outcome"] == "succeeded"
    assert body["error"] is None
    assert body["stage"] is None
    assert body["sha256"] == "ab" * 32
    assert body["size"] == len(b"id,amount\n1,2\n")
    at = dt.datetime.fromisoformat(body["at"])
    assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 60


@pytest.mark.parametrize("status", [408, 429])
def test_408_and_429_are_tried_again(
    tmp_path: Path, server: tuple[str, Script], status: int
) -> None:
    url, script = server
    script.answers = [status, 204]
    assert build({"url": url, **FAST})(context(tmp_path)) == {"webhook_status": 204}
    assert len(script.received) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_4xx_fails_at_once(tmp_path: Path, server: tuple[str, Script], status: int) -> None:
    url, script = server
    script.answers = [status]
    script.body = b'{"error": "no such pipeline"}'
    with pytest.raises(PermanentError, match=f"HTTP {status}") as raised:
        build({"url": url, **FAST})(context(tmp_path))
    assert "no such pipeline" in str(raised.value)
    assert len(script.received) == 1


def test_a_redirect_is_not_followed(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [302]
    with pytest.raises(PermanentError, match=re.escape("redirect to http://127.0.0.1:1/elsewhere")):
        build({"url": url, **FAST})(context(tmp_path))
    assert len(script.received) == 1


def test_5xx_at_every_attempt_is_an_ordinary_failure(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.answers = [500]
    with pytest.raises(DeliveryError, match=r"HTTP 500 .*\(4 attempt\(s\)\)") as raised:
        build({"url": url, **FAST, "attempts": 4})(context(tmp_path))
    assert not isinstance(raised.value, PermanentError)  # the daemon's retries apply
    assert len(script.received) == 4


def test_backoff_doubles(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [503]
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        build({"url": url, "backoff": "100ms", "attempts": 3})(context(tmp_path))
    assert 0.3 <= time.monotonic() - started < 2  # 100ms + 200ms between three attempts


def test_a_timeout_is_tried_again_then_fails(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = ["sleep"]
    script.sleep = 1.0
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"timed out.*\(2 attempt\(s\)\)"):
        build({"url": url, "timeout": "200ms", "backoff": "10ms", "attempts": 2})(context(tmp_path))
    assert time.monotonic() - started < 0.9
    assert len(script.received) == 2


def test_nobody_listening_is_tried_again(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeliveryError, match="cannot connect"):
        build({"url": f"http://127.0.0.1:{port}/", **FAST, "attempts": 2})(context(tmp_path))


def test_a_large_answer_is_not_read_whole(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    script.body = b"x" * (BODY_CAP * 16)
    assert build({"url": url, **FAST})(context(tmp_path)) == {"webhook_status": 200}


def test_cancel_between_attempts_returns_promptly(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.answers = [503]
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(InterruptedError, match="cancelled"):
            build({"url": url, "backoff": "30s", "attempts": 3})(context(tmp_path, cancel=cancel))
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2
    assert len(script.received) == 1


def test_in_stage_attempts_stop_within_the_stage_timeout(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.answers = [503]
    ctx = dataclasses.replace(context(tmp_path), timeout=1.0)
    with pytest.raises(DeliveryError, match=r"\(1 attempt\(s\)\)"):
        build({"url": url, "backoff": "5s", "attempts": 3})(ctx)
    assert len(script.received) == 1


# --- the body -------------------------------------------------------------------------------


def test_the_on_failure_summary(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    failure = {"stage": "validate", "reason": 'line 3, column "amount": "abc" is not a decimal'}
    build({"url": url, **FAST})(context(tmp_path, {FAILURE: failure}))
    body = script.received[0].json()
    assert body["outcome"] == "failed"
    assert body["error"] == failure["reason"]
    assert body["stage"] == "validate"
    assert body["rows"] is None
    assert body["sha256"] is None


def test_an_undecodable_name_makes_valid_json(tmp_path: Path, server: tuple[str, Script]) -> None:
    url, script = server
    name = b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    build({"url": url, **FAST})(context(tmp_path, name=name))
    raw = script.received[0].body
    raw.decode("utf-8")  # strict: valid UTF-8
    assert json.loads(raw)["name"] == "caf\\xe9.csv"


# --- headers ------------------------------------------------------------------------------


def test_headers_take_environment_variables_at_call_time(
    tmp_path: Path, server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = server
    monkeypatch.setenv("DROPLINE_TEST_TOKEN", "s3cret")
    headers = {"Authorization": "Bearer ${DROPLINE_TEST_TOKEN}", "X-Source": "dropline $HOME"}
    stage = build({"url": url, **FAST, "headers": headers})
    stage(context(tmp_path))
    monkeypatch.setenv("DROPLINE_TEST_TOKEN", "rotated")
    stage(context(tmp_path))
    assert [r.headers["Authorization"] for r in script.received] == [
        "Bearer s3cret",
        "Bearer rotated",
    ]
    assert script.received[0].headers["X-Source"] == "dropline $HOME"  # only ${...} is replaced


def test_headers_take_credentials_at_call_time(
    tmp_path: Path, server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    """${credential:NAME}: the file systemd's LoadCredential= passed, read at each call."""
    url, script = server
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "api-token").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    stage = build(
        {"url": url, **FAST, "headers": {"Authorization": "Bearer ${credential:api-token}"}}
    )
    stage(context(tmp_path))
    (folder / "api-token").write_text("rotated\n")
    stage(context(tmp_path))
    assert [r.headers["Authorization"] for r in script.received] == [
        "Bearer s3cret",
        "Bearer rotated",
    ]
    with pytest.raises(ConfigError, match=r"headers\.X-Key: .*credential \"nope\" was not passed"):
        build({"url": url, "headers": {"X-Key": "${credential:nope}"}})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        build({"url": url, "headers": {"X-Key": "${credential:api-token}"}})


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "where", "needle"),
    [
        ({"url": "ftp://example.org/in"}, "url", "http:// or https://"),
        ({"url": "example.org/hook"}, "url", "http:// or https://"),
        ({"url": "https:///hook"}, "url", "names no host"),
        ({"url": "https://u:p@example.org/"}, "url", "credentials"),
        ({"url": "https://example.org:port/"}, "url", "cannot read"),
        ({}, "url", 'missing required key "url"'),
        ({"url": "https://example.org/", "timeout": "0s"}, "timeout", "greater than 0"),
        ({"url": "https://example.org/", "attempts": 0}, "attempts", "from 1 to 20"),
        ({"url": "https://example.org/", "backof": "1s"}, "backof", 'did you mean "backoff"'),
        (
            {"url": "https://example.org/", "headers": {"Authorization": "Bearer ${NO_SUCH_VAR}"}},
            "headers.Authorization",
            "NO_SUCH_VAR is not set",
        ),
        (
            {"url": "https://example.org/", "headers": {"X-Key": "${not a name}"}},
            "headers.X-Key",
            "does not name an environment variable",
        ),
        (
            {"url": "https://example.org/", "headers": {"Idempotency-Key": "mine"}},
            "headers.Idempotency-Key",
            "set by dropline",
        ),
        (
            {"url": "https://example.org/", "headers": {"Bad Name": "x"}},
            "headers.Bad Name",
            "not a header name",
        ),
        ({"url": "https://example.org/", "headers": {"X-N": 5}}, "headers.X-N", "string"),
        ({"url": "https://example.org/", "headers": ["X-N"]}, "headers", "a mapping"),
    ],
)
def test_bad_options_name_the_key_and_line(
    options: dict[str, Any], where: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    # The line of every option given, as the configuration loader records them.
    lines = {key: 41 + i for i, key in enumerate(options)}
    headers = options.get("headers")
    if isinstance(headers, dict):
        lines |= {f"headers.{name}": 60 + i for i, name in enumerate(headers)}
    with pytest.raises(ConfigError) as raised:
        build(options, lines=lines)
    assert needle in raised.value.detail
    assert raised.value.key == f"{KEY}.with.{where}"
    assert raised.value.line == lines.get(where, 40)  # a missing option: the stage's line
    assert str(raised.value).startswith(f"/etc/dropline/dropline.yaml:{raised.value.line}: ")
