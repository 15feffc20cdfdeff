"""Item ids: assigned once at claim, the idempotency key every stage receives.

A ULID (48 bits of milliseconds, 80 random bits, Crockford base32): unique
without coordination, sortable by claim time, and never derived from an inode
(inodes are reused).
"""

from __future__ import annotations

import os
import random
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Seeded once from the kernel: ids must be unique, not unguessable, and a
# getrandom() call per file shows in a profile of a busy drain.
_random = random.Random(os.urandom(32))


# Two characters for every 10 bits: an id is ten pairs' lookups, not 26 steps.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_last_millis = -1
_last_prefix = ""


def _encode(value: int, chars: int) -> str:
    """VALUE as CHARS (even) base32 characters."""
    return "".join(_PAIRS[(value >> shift) & 1023] for shift in range(5 * chars - 10, -1, -10))


def new_item_id(now: float | None = None) -> str:
    """Return a fresh 26-character item id: 10 characters of time, 16 of randomness."""
    global _last_millis, _last_prefix
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    if millis != _last_millis:  # a batch shares its millisecond: encoded once
        _last_millis, _last_prefix = millis, _encode(millis, 10)
    r = _random.getrandbits(80)
    p = _PAIRS
    return (
        _last_prefix
        + p[r >> 70]
        + p[(r >> 60) & 1023]
        + p[(r >> 50) & 1023]
        + p[(r >> 40) & 1023]
        + p[(r >> 30) & 1023]
        + p[(r >> 20) & 1023]
        + p[(r >> 10) & 1023]
        + p[r & 1023]
    )
