"""``builtin: webhook``: POST a JSON summary of the file to a URL.

The body (UTF-8 JSON)::

    {"item_id": "01HV...", "name": "report.csv", "pipeline": "reports",
     "rows": 120, "outcome": "succeeded", "error": null, "stage": null,
     "sha256": "9f86...", "size": 18621, "at": "2024-05-01T12:00:03.318+00:00"}

In a pipeline's ``on_failure`` stages (the metadata holds FAILURE) the
outcome is "failed", ``error`` the reason and ``stage`` the stage that
failed.  ``rows`` and ``sha256`` come from earlier stages (validate-csv or
transform, sha256), ``size`` is that of the file the stage reads; each is
null when not known.

Every attempt sends the same body and ``Idempotency-Key: ITEMID-STAGE``, so
the receiver can drop what it already has.  A 2xx answer succeeds.  A 4xx
(but 408 and 429) or a redirect fails the file at once (PermanentError: the
receiver refuses it, sending it again cannot help).  A 5xx, 408, 429, a
connection error or a timeout is tried again ``attempts`` times in the stage,
``backoff`` apart (doubled each time); after that the stage fails as any
other and the daemon's own ``retries`` apply.  At most 64 KiB of an answer
are read.

urllib.request of the standard library does it: one POST, no session, a
certificate checked against the system's CAs; no dependency would add more
than it costs here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

from .. import __version__
from ..config.keys import key
from ..config.source import Loc
from ..config.values import Duration, FreeMap, IntRange, Text
from ..credentials import CredentialError, read_credential
from ..errors import PermanentError, RetriableError
from ..stamps import iso_now
from . import FAILURE, StageContext, StageFunc
from .builtin import BuildEnv
from .csvdata import ROWS_KEY

BODY_CAP = 64 * 1024  # bytes of an answer read at most
RETRIED_4XX = (408, 429)  # Request Timeout, Too Many Requests: the receiver asks for later
SHA256_KEY = "sha256"

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL = "credential:"  # ${credential:NAME}: a credential, not a variable
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
# Set by the stage (or by http.client) for every request: not from the configuration.
_OWN_HEADERS = ("content-length", "host", "idempotency-key", "transfer-encoding", "connection")


class DeliveryError(RetriableError):
    """The receiver was not reached, or asked for later, at every attempt (retried)."""


@dataclass(frozen=True)
class Options:
    url: str = key(Text("an http:// or https:// URL"))
    timeout: float = key(Duration(positive=True), default=10.0)
    headers: Mapping[str, object] = key(
        FreeMap("a mapping of header name: value"), default_factory=dict
    )
    attempts: int = key(IntRange(1, 20), default=3)
    backoff: float = key(Duration(positive=False), default=1.0)


def build(opts: Options, at: Loc, env: BuildEnv) -> StageFunc:
    url, timeout, attempts, backoff = opts.url, opts.timeout, opts.attempts, opts.backoff
    _check_url(at, url)
    headers = _headers(opts.headers, at.child("headers"))
    parts = urllib.parse.urlsplit(url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def stage(ctx: StageContext) -> Mapping[str, Any]:
        body = json.dumps(summary(ctx), ensure_ascii=False).encode()
        if ctx.rehearsal:
            # Described, not sent; the headers by name only (their values may be secrets).
            named = ", ".join(["Content-Type", *headers, "Idempotency-Key"])
            return {"would": f"POST {shown} ({len(body)} bytes of JSON; headers {named})"}
        sent = {
            "Content-Type": "application/json",
            "User-Agent": f"dropline/{__version__}",
            **{name: _resolve(name, value) for name, value in headers.items()},
            "Idempotency-Key": idempotency_key(ctx),
        }
        deadline = time.monotonic() + ctx.timeout if ctx.timeout > 0 else None
        delay = backoff
        tried = 0
        while True:
            _check_cancel(ctx)
            tried += 1
            status, detail = _post(url, body, sent, timeout)
            if 200 <= status < 300:
                return {"webhook_status": status}
            if 300 <= status < 500 and status not in RETRIED_4XX:
                raise PermanentError(f"webhook: POST {shown} answered {detail}")
            last = detail
            if tried >= attempts:
                break
            if deadline is not None and time.monotonic() + delay + timeout > deadline:
                break  # another attempt would outlive the stage's own timeout
            if ctx.cancel is not None:
                if ctx.cancel.wait(delay):
                    _check_cancel(ctx)
            else:
                time.sleep(delay)
            delay *= 2
        raise DeliveryError(f"webhook: POST {shown}: {last} ({tried} attempt(s))")

    return stage


# --- options ------------------------------------------------------------------------


def _check_url(at: Loc, url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        at.fail("url", f'cannot read "{url}" as a URL: {exc}')
    if parts.scheme not in ("http", "https"):
        at.fail("url", f'expected an http:// or https:// URL, got "{url}"')
    if not parts.hostname:
        at.fail("url", f'"{url}" names no host')
    if parts.username is not None or parts.password is not None:
        at.fail(
            "url",
            "credentials do not belong in the URL: send them in a header "
            "(headers: {Authorization: Bearer ${TOKEN}})",
        )
    if any(c.isspace() or ord(c) < 32 for c in url):
        at.fail("url", "a URL has no spaces or control characters (percent-encode them)")


def _headers(given: Mapping[str, object], mapping: Loc) -> dict[str, str]:
    """The ``headers`` mapping, checked; ``${NAME}`` must name a set environment variable,
    ``${credential:NAME}`` a credential the unit passes (``credentials.py``)."""
    headers: dict[str, str] = {}
    for name in list(given):
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            mapping.fail(str(name), f'"{name}" is not a header name (letters, digits, -)')
        if name.lower() in _OWN_HEADERS:
            mapping.fail(name, f'the header "{name}" is set by dropline, not configured')
        value = given[name]
        if not isinstance(value, str):
            mapping.fail(name, f"expected a string value, got {type(value).__name__}")
        if "\r" in value or "\n" in value:
            mapping.fail(name, "a header value is one line")
        for variable in _VARIABLE.findall(value):
            if variable.startswith(_CREDENTIAL):
                try:
                    secret = read_credential(variable.removeprefix(_CREDENTIAL))
                except CredentialError as exc:
                    mapping.fail(name, str(exc))
                if "\r" in secret or "\n" in secret:
                    mapping.fail(name, f"${{{variable}}} holds more than one line")
                continue
            if not _ENV_NAME.fullmatch(variable):
                mapping.fail(name, f'"${{{variable}}}" does not name an environment variable')
            if variable not in os.environ:
                mapping.fail(
                    name,
                    f"the environment variable {variable} is not set (it must be set in "
                    "dropline's environment, e.g. with EnvironmentFile= in its unit)",
                )
        headers[name] = value
    return headers


def _resolve(name: str, value: str) -> str:
    """VALUE with each ``${NAME}`` replaced from the environment, and each
    ``${credential:NAME}`` from its credential, now (a rotated secret is used at once)."""

    def variable(match: re.Match[str]) -> str:
        if match.group(1).startswith(_CREDENTIAL):
            try:
                found: str | None = read_credential(match.group(1).removeprefix(_CREDENTIAL))
            except CredentialError as exc:
                raise PermanentError(f"webhook: header {name}: {exc}") from None
        else:
            found = os.environ.get(match.group(1))
        if found is None:
            raise PermanentError(f"webhook: header {name}: ${{{match.group(1)}}} is not set")
        if "\r" in found or "\n" in found:
            raise PermanentError(f"webhook: header {name}: ${{{match.group(1)}}} holds a newline")
        return found

    return _VARIABLE.sub(variable, value)


# --- the request ---------------------------------------------------------------------


def summary(ctx: StageContext) -> dict[str, Any]:
    """The JSON body: what happened to this file."""
    meta = ctx.metadata
    failed = FAILURE in meta
    failure = meta.get(FAILURE)
    reason = stage = None
    if isinstance(failure, Mapping):
        reason = failure.get("reason")
        stage = failure.get("stage")
    elif failed:
        reason = failure
    rows = meta.get(ROWS_KEY)
    sha256 = meta.get(SHA256_KEY)
    try:
        size: int | None = os.stat(ctx.data_file()).st_size
    except OSError:
        size = None
    return {
        "item_id": ctx.item_id,
        # Undecodable bytes of a name as \xNN, so the body is valid UTF-8.
        "name": os.fsencode(ctx.name).decode("utf-8", "backslashreplace"),
        "pipeline": _text(ctx.pipeline),
        "rows": rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
        "outcome": "failed" if failed else "succeeded",
        "error": None if reason is None else _text(str(reason)),
        "stage": None if stage is None else _text(str(stage)),
        "sha256": sha256 if isinstance(sha256, str) else None,
        "size": size,
        "at": iso_now(),
    }


def idempotency_key(ctx: StageContext) -> str:
    """ITEMID-STAGE: the same at every attempt, and for every restart, of this stage."""
    return f"{ctx.item_id}-{urllib.parse.quote(ctx.stage, safe='')}"


def _text(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: urllib would resend a POST as a bodiless GET."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """POST BODY: (status, a line saying what came back); status 0 when nothing did."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 - http(s) only, checked at start-up
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(BODY_CAP)
            return response.status, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read(BODY_CAP).decode("utf-8", "replace")
        detail = f"HTTP {exc.code} {exc.reason}"
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location")
            detail += f" (a redirect to {where}: set url to the final address)"
        elif text.strip():
            detail += f": {' '.join(text.split())[:300]}"
        return exc.code, detail
    except urllib.error.URLError as exc:
        return 0, f"cannot connect: {exc.reason}"
    except (OSError, http.client.HTTPException) as exc:
        # TimeoutError (no answer within the timeout), a reset connection, a bad answer.
        return 0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _check_cancel(ctx: StageContext) -> None:
    if ctx.cancel is not None and ctx.cancel.is_set():
        raise InterruptedError("webhook: cancelled (dropline is stopping)")


__all__ = ["BODY_CAP", "DeliveryError", "build", "idempotency_key", "summary"]
