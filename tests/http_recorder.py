"""A recording HTTP server on 127.0.0.1 for the tests of webhooks.

It answers from a script (one entry per request: a status, or "sleep" to
answer later than a stage's timeout) and keeps every request it got.  The
``server`` fixture (exposed by conftest.py) runs one in a thread per test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


@dataclass
class Script:
    """What the server answers, request after request (the last entry repeats)."""

    answers: list[int | str] = field(default_factory=lambda: [200])
    sleep: float = 1.0
    body: bytes = b'{"ok": true}'
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> int | str:
        with self.lock:
            index = min(len(self.received) - 1, len(self.answers) - 1)
            return self.answers[index]


class Recorder(ThreadingHTTPServer):
    daemon_threads = True
    script: Script

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) breaks the pipe: expected here


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        script = cast(Recorder, self.server).script
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with script.lock:
            script.received.append(Received(self.path, dict(self.headers.items()), body))
        answer = script.next()
        if answer == "sleep":
            time.sleep(script.sleep)
            answer = 200
        status = int(answer)
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(script.body)))
        self.end_headers()
        self.wfile.write(script.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    """(url, script) of a recording server running in a thread for the test."""
    httpd = Recorder(("127.0.0.1", 0), Handler)
    httpd.script = Script()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hooks/dropline", httpd.script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
