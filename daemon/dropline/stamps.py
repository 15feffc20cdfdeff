"""One way to write a moment, everywhere dropline writes one: RFC 3339 in local
time with its UTC offset, to the millisecond (``2026-11-29T09:14:02.318+01:00``).

The log lines, every ``--json`` document, ``NAME.error.json`` and the
webhook's body use it, so that a moment read in one can be looked up in the
others as it is written.
"""

from __future__ import annotations

import time

# The second last written, and its text up to the fraction: a log line is
# stamped at full speed, and localtime and strftime per line were most of it.
_last: tuple[int, str, str] = (-1, "", "")


def _second(second: int) -> tuple[int, str, str]:
    local = time.localtime(second)
    offset = time.strftime("%z", local)
    return second, time.strftime("%Y-%m-%dT%H:%M:%S", local), f"{offset[:3]}:{offset[3:]}"


def iso(ts: float) -> str:
    """TS (epoch seconds) as RFC 3339 with the local UTC offset."""
    global _last
    second = int(ts // 1)
    known = _last
    if known[0] != second:
        known = _last = _second(second)
    return f"{known[1]}.{int((ts - second) * 1000):03d}{known[2]}"


def iso_now() -> str:
    """Now, as ``iso`` writes it."""
    return iso(time.time())


__all__ = ["iso", "iso_now"]
