"""dropline: a supervisor daemon for drop folders."""

__version__ = "0.1.0"
