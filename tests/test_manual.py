"""The manual page and the shell completions: made from the parser, so every
command and option is in them; the page renders without a warning, the bash
completion completes in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dropline.arguments import build_parser
from dropline.manual import bash_completion, commands, man_page, zsh_completion

from .harness import REPO, wait_until


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


TMUX, ZSH = shutil.which("tmux"), shutil.which("zsh")


@pytest.mark.skipif(TMUX is None or ZSH is None, reason="tmux or zsh is not installed")
def test_zsh_completes_from_the_first_tab(tmp_path: Path) -> None:
    """In a real interactive zsh (in tmux), with the completion where compinit finds
    it: the very first Tab completes (compinit loads the file as the function at
    that Tab), and the next ones do too."""
    assert TMUX is not None and ZSH is not None
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "_dropline").write_text(zsh_completion())
    (tmp_path / ".zshrc").write_text(
        f"fpath=({functions} $fpath)\nautoload -U compinit && compinit -u\nPS1='> '\n"
    )
    program = tmp_path / "bin" / "dropline"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    session = f"dropline-zsh-{os.getpid()}"
    tmux = [TMUX, "-L", session]
    env = f"ZDOTDIR={tmp_path} PATH={program.parent}:/usr/bin:/bin"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "10",
         "env", *env.split(), ZSH, "-i"],
        check=True,
    )  # fmt: skip
    try:

        def line() -> str:
            shown = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            return shown.splitlines()[0] if shown.strip() else ""

        wait_until(lambda: line().startswith(">"), 20, what="the zsh prompt")
        subprocess.run([*tmux, "send-keys", "-t", session, "dropline hist", "Tab"], check=True)
        wait_until(lambda: line() == "> dropline history", 10, what="the first Tab's completion")
        keys = ["C-u", "dropline history --out", "Tab"]
        subprocess.run([*tmux, "send-keys", "-t", session, *keys], check=True)
        wait_until(lambda: line() == "> dropline history --outcome", 10, what="the next Tab's")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
