"""Value checks for values with a format of their own: globs, commands, references, addresses.

Like values.py, each check takes the value as read and its Loc and returns it
converted, or raises the Loc's ConfigError saying what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import keyword
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .values import describe, items, scalar, text

if TYPE_CHECKING:
    from .source import Loc

_GLOB_RULE = 'a glob on the file name such as "*.csv" or "report-[0-9]*" (no "/")'


def glob_problem(pattern: str) -> str | None:
    """Return why `pattern` is not a usable file-name glob, or None if it is."""
    if not pattern:
        return "an empty glob matches nothing"
    if "/" in pattern:
        return 'a glob matches the file name only, so it cannot contain "/"'
    if "\0" in pattern:
        return "a glob cannot contain a NUL character"
    i = 0
    while i < len(pattern):
        if pattern[i] != "[":
            i += 1
            continue
        # fnmatch's rule: a "]" right after "[" or "[!" is a literal member.
        j = i + 1
        if j < len(pattern) and pattern[j] == "!":
            j += 1
        if j < len(pattern) and pattern[j] == "]":
            j += 1
        while j < len(pattern) and pattern[j] != "]":
            j += 1
        if j >= len(pattern):
            # fnmatch would silently match "[" literally, which is never what was meant.
            return f'the "[" at position {i + 1} has no closing "]"'
        i = j + 1
    return None


def _glob(value: object, at: Loc) -> str:
    value = scalar(value, at, _GLOB_RULE)
    if not isinstance(value, str):
        raise at.error(f"expected {_GLOB_RULE}, got {describe(value)}")
    problem = glob_problem(value)
    if problem is not None:
        shown = json.dumps(value, ensure_ascii=False)
        raise at.error(f"bad glob {shown}: {problem}; expected {_GLOB_RULE}")
    return value


class Globs:
    """A list of globs; with SINGLE_OK one glob may be written without the list."""

    def __init__(self, *, single_ok: bool, empty_ok: bool) -> None:
        self.single_ok, self.empty_ok = single_ok, empty_ok

    def __call__(self, value: object, at: Loc) -> tuple[str, ...]:
        if self.single_ok and not isinstance(value, list | dict):
            return (_glob(value, at),)
        what = "a glob or a non-empty list of globs" if self.single_ok else "a list of globs"
        found = items(value, at, what)
        if not found and not self.empty_ok:
            raise at.error(f"expected {what}, got an empty list")
        return tuple(_glob(item, at.item(i)) for i, item in enumerate(found))


# The placeholders a command's arguments may hold (stages/command.py substitutes them).
PLACEHOLDERS: tuple[str, ...] = ("path", "name", "item_id", "pipeline", "stage")
# What reads as one: "{word}".  Not after "$", "%", "@" or "#", where braces belong to
# the program's own language (the shell's "${HOME}", curl's "%{http_code}").
_PLACEHOLDER_LIKE = re.compile(r"(?<![$%@#])\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDERS_ALLOWED = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
_ARGV_EXAMPLE = '["sha256sum", "{path}"]'


class Argv:
    """A command as an argv list, never a shell string; placeholders known."""

    def __call__(self, value: object, at: Loc) -> tuple[str, ...]:
        what = f"an argv list, never a shell string, e.g. {_ARGV_EXAMPLE}"
        found = items(value, at, what)
        if not found:
            raise at.error(f"expected {what}, got an empty list")
        argv: list[str] = []
        for i, item in enumerate(found):
            arg = scalar(item, at.item(i), "a string")
            if not isinstance(arg, str):
                # YAML reads "-n 10" as the integer 10; a quote says what was meant.
                raise at.item(i).error(
                    f"expected a string, got {describe(arg)}; quote it in the argv list"
                )
            _placeholders(arg, at.item(i))
            argv.append(arg)
        if not argv[0]:
            raise at.item(0).error("expected a program name, got an empty string")
        return tuple(argv)


def _placeholders(arg: str, at: Loc) -> None:
    """An unknown "{word}" would reach the program as it is, for every file."""
    for found in _PLACEHOLDER_LIKE.finditer(arg):
        word = found.group(1)
        if word in PLACEHOLDERS:
            continue
        close = difflib.get_close_matches(word.lower(), PLACEHOLDERS, n=1)
        hint = f'; did you mean "{{{close[0]}}}"?' if close else ";"
        raise at.error(
            f'unknown placeholder "{{{word}}}"{hint} allowed: {_PLACEHOLDERS_ALLOWED}; '
            f'braces meant for the program itself (awk\'s "{{print}}") take a space: '
            f'"{{ {word} }}"'
        )


class PythonRef:
    def __call__(self, value: object, at: Loc) -> str:
        expected = 'a reference "module.path:function" such as "ingest.stages:validate"'
        ref = text(value, at, expected)
        module, sep, function = ref.partition(":")
        parts = [*module.split("."), *function.split(".")]
        if not sep or not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            raise at.error(f"expected {expected}, got {describe(ref)}")
        return ref


class MarkerTemplate:
    """The name of a file's done-marker: "{name}" once, with text beside it, no "/"."""

    def __call__(self, value: object, at: Loc) -> str:
        expected = 'a file name with "{name}" in it once, such as "{name}.done" or "{name}.ok"'
        template = text(value, at, expected)
        if template.count("{name}") != 1 or template == "{name}" or "/" in template:
            raise at.error(f"expected {expected}, got {describe(template)}")
        rest = template.replace("{name}", "")
        if "{" in rest or "}" in rest:
            raise at.error(
                f'only "{{name}}" is replaced; expected {expected}, got {describe(template)}'
            )
        return template


_END_FOLDER = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
# The spool's own folders: a duplicate never ends among the files still to run.
_NOT_AN_END = ("incoming", "working")


class EndFolder:
    """Where a skipped duplicate ends: "archive", "failed", or a folder of the data
    folder the operator names (made beside archive/ if missing: spool/ends.py)."""

    def __call__(self, value: object, at: Loc) -> str:
        expected = (
            '"archive", "failed", or the name of a folder in the data folder such as '
            '"duplicates" (1 to 64 letters, digits, ".", "_" and "-", not starting with '
            '"."; not incoming or working)'
        )
        name = text(value, at, expected)
        if not _END_FOLDER.fullmatch(name) or name in _NOT_AN_END:
            raise at.error(f"expected {expected}, got {describe(name)}")
        return name


_LISTEN_RULE = (
    'an address "host:port" such as "127.0.0.1:9464", "localhost:9464" or "[::1]:9464" '
    "(host an IP address or localhost, IPv6 in brackets; port 1 to 65535)"
)


class Listen:
    """host:port of an HTTP endpoint: (host, port), an IPv6 host without brackets."""

    def __call__(self, value: object, at: Loc) -> tuple[str, int]:
        if isinstance(value, list):
            # listen: [::1]:9464 unquoted is YAML's flow list, not an address.
            raise at.error(f'expected {_LISTEN_RULE}, got a list; quote it: "[::1]:9464"')
        value = scalar(value, at, _LISTEN_RULE)
        got = f"expected {_LISTEN_RULE}, got {describe(value)}"
        if not isinstance(value, str):
            raise at.error(got)
        bracketed = value.startswith("[")
        if bracketed:
            host, sep, port_text = value[1:].partition("]:")
        else:
            host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise at.error(got)
        if not bracketed and ":" in host:
            raise at.error(f"an IPv6 address needs brackets; {got}")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise at.error(f"the port must be a number from 1 to 65535; {got}")
        if host != "localhost" or bracketed:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or bracketed != (address.version == 6):
                raise at.error(
                    f"the host must be an IP address or localhost (no other host names); {got}"
                )
        return host, int(port_text)


_TEXTFILE_RULE = "an absolute path ending in .prom, e.g. /var/lib/node_exporter/dropline.prom"


class Textfile:
    def __call__(self, value: object, at: Loc) -> Path:
        written = text(value, at, _TEXTFILE_RULE)
        got = f"expected {_TEXTFILE_RULE}, got {describe(written)}"
        if "\0" in written or not written.startswith("/") or not written.endswith(".prom"):
            raise at.error(got)
        if written.endswith("/.prom"):
            raise at.error(f"{got}; node exporter skips hidden files")
        return Path(written)
