"""``python -m dropline``: the same as the ``dropline`` command."""

from .cli import entry

# Guarded: a stage's worker process ("spawn") imports this module again.
if __name__ == "__main__":
    entry()
