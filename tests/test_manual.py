"""The manual page and the shell completions: made from the parser, so every
command and option is in them; the page renders without a warning, the bash
completion completes in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dropline.arguments import build_parser
from dropline.manual import bash_completion, commands, man_page, zsh_completion

from .harness import REPO


def _complete(script: str, *words: str) -> list[str]:
    """What bash's completion of the last of WORDS offers (COMPREPLY)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
        'if [ -z "${COMP_WORDS[COMP_CWORD]+x}" ]; then COMP_WORDS+=(""); fi\n'
        '_dropline; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_every_command_and_option_is_in_the_page_and_the_completion() -> None:
    page, bash = man_page(), bash_completion()
    found = commands(build_parser())
    assert {c.name for c in found} >= {"run", "check", "status", "history", "retry", "prune"}
    for command in found:
        assert f".SS {command.name}" in page
        assert command.name in _complete(bash, "dropline", command.name[:2])
        offered = _complete(bash, "dropline", command.name, "-")
        for option in command.options:
            for flag in option.flags:
                assert flag.replace("-", "\\-") in page, flag
                if flag.startswith("--"):
                    assert flag in offered, (command.name, flag, offered)


def test_bash_completes_choices_and_files() -> None:
    bash = bash_completion()
    assert _complete(bash, "dropline", "history", "--outcome", "") == [
        "archived",
        "failed",
        "vanished",
        "unfinished",
    ]
    assert _complete(bash, "dropline", "history", "--outcome", "fa") == ["failed"]
    assert _complete(bash, "dropline", "status", "--config", str(REPO / "READ")) == [
        str(REPO / "README.md")
    ]
    assert _complete(bash, "dropline", "history", "--since", "") == []  # the user's own value
    assert _complete(bash, "dropline", "check", "--path", "/us") == []  # a search path, not a file
    # dropline try FILE: a file name, or an option after a dash.
    assert _complete(bash, "dropline", "try", str(REPO / "READ")) == [str(REPO / "README.md")]
    assert "--pipeline" in _complete(bash, "dropline", "try", "--")


def test_the_page_renders_without_a_warning() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    done = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z"], input=man_page(), capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")
    text = subprocess.run(
        [groff, "-man", "-Tutf8"], input=man_page(), capture_output=True, text=True, check=True
    ).stdout
    assert "dropline history" in text and "--outcome" in text.replace("\u2010", "-")


def test_zsh_gets_the_same_through_bashcompinit() -> None:
    zsh = zsh_completion()
    assert zsh.startswith("#compdef dropline\n") and "bashcompinit" in zsh
    assert "complete -F _dropline dropline" in zsh
    if shutil.which("zsh"):
        done = subprocess.run(["zsh", "-n"], input=zsh, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_python_m_dropline_manual_prints_each() -> None:
    env_path = str(REPO / "daemon")
    for kind, start in (("man", ".TH DROPLINE 1"), ("bash", "# bash"), ("zsh", "#compdef")):
        done = subprocess.run(
            [sys.executable, "-m", "dropline.manual", kind],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": env_path},
            check=True,
        )
        assert done.stdout.startswith(start)
    wrong = subprocess.run(
        [sys.executable, "-m", "dropline.manual", "fish"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path},
    )
    assert wrong.returncode == 2 and "usage" in wrong.stderr
