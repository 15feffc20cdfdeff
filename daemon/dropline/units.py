"""Parsing of the human units in the configuration: durations and sizes.

Pure functions that raise ValueError with a message fit for an operator; the
configuration loader adds the file, line and key.  Nothing here reads files.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

DURATION_FORMS = (
    'a number of seconds (30, 1.5) or a string such as "500ms", "30s", "5m", "1h", "1d", "2m30s"'
)
SIZE_FORMS = (
    'a number of bytes (1048576) or a string such as "100B", "512KiB", "10MiB", "4GiB", '
    '"1KB", "1MB", "1GB"'
)

_DURATION_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Longest alternatives first so that "ms" is not read as "m" followed by junk.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Return `value` as seconds (>= 0).

    Accepts an int or float of seconds, or a string of one or more
    number-and-unit parts from the largest unit to the smallest ("2m30s"),
    with units d, h, m, s and ms; a plain number string means seconds.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str):
        return _parse_duration_text(value)
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"duration {value} is too large") from None
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value} is not a finite number")
    if seconds < 0:
        raise ValueError(f"duration {value} is negative")
    return seconds


def _parse_duration_text(value: str) -> float:
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    if text.startswith("-"):
        raise ValueError(f"duration {value!r} is negative")
    seconds = 0.0
    position = 0
    previous_scale = math.inf
    while position < len(text):
        part = _DURATION_PART.match(text, position)
        if part is None:
            raise ValueError(f"cannot read {value!r} as a duration")
        scale = _DURATION_UNITS[part.group(2)]
        # "30s2m" or "1m1m" is almost certainly a typo, not an intended sum.
        if scale >= previous_scale:
            raise ValueError(f"duration {value!r} must list its units from largest to smallest")
        previous_scale = scale
        seconds += float(part.group(1)) * scale
        position = part.end()
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is too large")
    return seconds


def parse_size(value: object) -> int:
    """Return `value` as a whole number of bytes (>= 0).

    Accepts an int, or a string of a number and an optional unit: B, decimal
    KB/MB/GB/TB (powers of 1000) or binary KiB/MiB/GiB/TiB (powers of 1024),
    in any letter case.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"size {value} is not a whole number of bytes")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    text = value.strip().lower()
    found = _SIZE.fullmatch(text)
    if found is None:
        raise ValueError(f"cannot read {value!r} as a size")
    number, unit = found.groups()
    if unit and unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in {value!r}")
    # Decimal keeps "1.5GiB" exact, where a float could land a byte off.
    size = Decimal(number) * _SIZE_UNITS[unit or "b"]
    if size != size.to_integral_value():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(size)
