"""``python -m dropline``: the same as the ``dropline`` command."""

from .cli import entry

entry()
