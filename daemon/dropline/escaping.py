"""Text for a log line or a terminal: controls, surrogates and bad bytes escaped.

Kept apart from ``log.py`` so that the read commands (``status``,
``history``), which escape every name they print, do not import structlog.
"""

from __future__ import annotations

_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_text(value: str | bytes) -> str:
    """Return VALUE printable on one line: controls, surrogates and bad bytes escaped.

    Bytes are decoded as UTF-8 with surrogateescape, so an invalid byte shows as
    ``\\xff`` rather than being lost or crashing the encoder.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if value.isprintable() and "\\" not in value:
        return value
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
