"""Secrets passed by systemd's LoadCredential=: read from $CREDENTIALS_DIRECTORY
by the stages that name them, never from the configuration's text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dropline.credentials import CredentialError, read_credential


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    return folder


def test_a_credential_is_its_file_without_the_final_newline(credentials: Path) -> None:
    (credentials / "api-token").write_text("s3cret\n")
    (credentials / "pg-dsn").write_text("host=db password=x y\n\n")
    assert read_credential("api-token") == "s3cret"
    assert read_credential("pg-dsn") == "host=db password=x y\n"  # only one newline goes
    (credentials / "windows").write_bytes(b"token\r\n")
    assert read_credential("windows") == "token"
    (credentials / "long").write_text("k" * 100_000 + "\n")
    assert read_credential("long") == "k" * 100_000  # whole, however long


def test_what_cannot_be_read_says_how_to_pass_it(
    credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CredentialError, match=r"was not passed .*LoadCredential=missing:"):
        read_credential("missing")
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", credentials / "linked")
    with pytest.raises(CredentialError, match="cannot be read"):
        read_credential("linked")  # never through a symlink
    with pytest.raises(CredentialError, match="is not a credential name"):
        read_credential("../etc/shadow")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(CredentialError, match="CREDENTIALS_DIRECTORY is not set"):
        read_credential("api-token")
