"""``python -m dropline``: the same as the ``dropline`` command."""

from .cli import entry

# Guarded: importing the package's main module must not start the command line.
if __name__ == "__main__":
    entry()
