"""Secrets from systemd's LoadCredential=: read from $CREDENTIALS_DIRECTORY.

A database password or a webhook token does not belong in dropline.yaml (it
is readable by the group that edits it) nor in the service's environment
(inherited by every stage program).  The unit passes it as a credential
(``LoadCredential=pg-dsn:/etc/dropline/credentials/pg-dsn``): systemd copies
the file to a directory that only the service can read and names it in
``$CREDENTIALS_DIRECTORY``.  The configuration names the credential
(``dsn_credential: pg-dsn``, ``${credential:api-token}`` in a webhook header).
Outside the service (``dropline check`` in a shell), point
``CREDENTIALS_DIRECTORY`` at the folder that holds the files.
"""

from __future__ import annotations

import os
import re

# What systemd accepts as a credential's name (a file name without a slash).
NAME = re.compile(r"[A-Za-z0-9_.@:+-]+")


class CredentialError(ValueError):
    """A credential named by the configuration that cannot be read."""


def read_credential(name: str) -> str:
    """The text of credential NAME (one final newline dropped: files end with one)."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise CredentialError(f'"{name}" is not a credential name (letters, digits, ._@:+-)')
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise CredentialError(
            f'the credential "{name}" cannot be read: no credentials were passed '
            f"(CREDENTIALS_DIRECTORY is not set; the unit passes them with "
            f"LoadCredential={name}:/etc/dropline/credentials/{name})"
        )
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialError(
            f'the credential "{name}" was not passed (not in {directory}; add '
            f"LoadCredential={name}:/etc/dropline/credentials/{name} to the unit)"
        ) from None
    except OSError as exc:
        raise CredentialError(f'the credential "{name}" cannot be read: {exc.strerror}') from None
    try:
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read()
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    for ending in ("\r\n", "\n"):  # the file's last line ending, as an editor wrote it
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


__all__ = ["NAME", "CredentialError", "read_credential"]
