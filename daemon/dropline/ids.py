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


def new_item_id(now: float | None = None) -> str:
    """Return a fresh 26-character item id."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | _random.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
