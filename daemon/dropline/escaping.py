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
        # Each form reads back as one thing (``unescape_text``): \xHH a byte (an
        # ASCII control, or one that was not UTF-8), \uHHHH and \UHHHHHHHH a character.
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


_UNESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\"}


def unescape_text(text: str) -> bytes:
    """The name ``escape_text`` printed as TEXT, as bytes: what an operator pastes
    from ``status`` or the journal finds the file.  ``\\xHH`` is a byte,
    ``\\uHHHH`` and ``\\UHHHHHHHH`` a character; a backslash that starts no escape
    stays itself."""
    out = bytearray()
    i, end = 0, len(text)
    while i < end:
        ch = text[i]
        if ch == "\\" and i + 1 < end:
            nxt = text[i + 1]
            if nxt in _UNESCAPES:
                out += _UNESCAPES[nxt]
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(nxt, 0)
            digits = text[i + 2 : i + 2 + width]
            if width and len(digits) == width and all(d in _HEX for d in digits):
                code = int(digits, 16)
                out += bytes([code]) if nxt == "x" else chr(code).encode("utf-8", "surrogatepass")
                i += 2 + width
                continue
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    return bytes(out)


_HEX = frozenset("0123456789abcdefABCDEF")


def quoted(name: str | bytes) -> str:
    """NAME for a sentence: escaped and in double quotes (never Python's b'...')."""
    return f'"{escape_text(name)}"'


def field_text(value: object) -> str:
    """A field's value as text for a journal field or a console line: a string as it
    is, a number as written, true/false, and a list or a mapping as JSON (never
    Python's ['a', 'b'] or True)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        import json

        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
