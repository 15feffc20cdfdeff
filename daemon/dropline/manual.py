"""The manual page and the shell completions, made from the command line's parser.

``python -m dropline.manual man|bash|zsh`` prints one of them; ``make
install`` writes them where man, bash-completion and zsh look.  Both come
from ``arguments.build_parser``, so a command or an option cannot be added
without them knowing it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from . import __version__
from .arguments import build_parser


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    metavar: str | None  # None: a flag that takes no value
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    usage: str
    options: tuple[Option, ...]
    epilog: str
    takes_file: bool = False  # a positional FILE (dropline try): completed with file names


def _options(parser: argparse.ArgumentParser) -> Iterator[Option]:
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        takes = action.nargs != 0
        metavar = action.metavar or action.dest.upper() if takes else None
        choices = tuple(str(c) for c in action.choices or ())
        text = (action.help or "") % {"default": action.default} if action.help else ""
        yield Option(tuple(action.option_strings), str(metavar) if metavar else None, choices, text)


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every command of PARSER, with its options, in the order --help lists them."""
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            usage = sub.format_usage().removeprefix("usage: ").strip()
            found.append(
                Command(
                    name,
                    summaries.get(name, ""),
                    sub.description or "",
                    " ".join(usage.split()),
                    tuple(_options(sub)),
                    sub.epilog or "",
                    any(not a.option_strings and a.metavar == "FILE" for a in sub._actions),
                )
            )
    return found


# --- the manual page (roff, man(7)) ----------------------------------------------------


def _roff(text: str) -> str:
    """TEXT safe in a roff line: backslashes and hyphens escaped, no leading dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def man_page(parser: argparse.ArgumentParser | None = None) -> str:
    """dropline(1)."""
    parser = parser or build_parser()
    out = [
        f'.TH DROPLINE 1 "" "dropline {__version__}" "dropline manual"',
        ".SH NAME",
        "dropline \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        ".B dropline",
        "COMMAND [OPTIONS]",
        ".br",
        ".B dropline",
        "\\-\\-version",
        ".SH DESCRIPTION",
        _roff(
            "dropline watches a drop folder and drives every file through its pipeline's "
            "stages to archive/ or failed/, its progress checkpointed in SQLite. The README "
            "installed beside the program is the operator's manual; this page lists the "
            "commands and their options."
        ),
        ".SH COMMANDS",
    ]
    for command in commands(parser):
        out += [".SS " + _roff(command.name), ".B " + _roff(command.usage)]
        out += [".PP", _roff(command.description or command.summary)]
        for option in command.options:
            flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in option.flags)
            value = f" \\fI{_roff(option.metavar)}\\fR" if option.metavar else ""
            said = option.help + (f" (one of: {', '.join(option.choices)})" * bool(option.choices))
            out += [".TP", flags + value, _roff(said)]
        if command.epilog:
            out += [".PP", "Examples:", ".nf"]
            out += [_roff(line.strip()) for line in command.epilog.splitlines()[1:]]
            out += [".fi"]
    out += [
        ".SH EXIT STATUS",
        ".TP",
        "0",
        "success",
        ".TP",
        "1",
        _roff("a runtime failure (another dropline runs, the state cannot be read, ...)"),
        ".TP",
        "2",
        _roff("a usage or configuration error, named with its file, line and key"),
        ".SH FILES",
        ".TP",
        "/etc/dropline/dropline.yaml",
        "the configuration ($DROPLINE_CONFIG, or \\-\\-config, names another)",
        ".TP",
        "/var/lib/dropline/state.db",
        "the state database",
        ".TP",
        "/opt/automation/data",
        _roff("the data folder: incoming/, working/, archive/, failed/"),
        ".SH SEE ALSO",
        "systemctl(1), journalctl(1)",
    ]
    return "\n".join(out) + "\n"


# --- completions ---------------------------------------------------------------------


def bash_completion(parser: argparse.ArgumentParser | None = None) -> str:
    """A bash completion for dropline: its commands, each one's options, their choices,
    file names for --config."""
    parser = parser or build_parser()
    found = commands(parser)
    cases = []
    for command in found:
        flags = " ".join(f for o in command.options for f in o.flags)
        values = []
        for option in command.options:
            if option.metavar is None:
                continue
            pattern = "|".join(option.flags)
            if option.choices:
                values.append(f'{pattern}) words="{" ".join(option.choices)}" ;;')
            elif option.metavar == "PATH":
                values.append(f"{pattern}) files=1 ;;")
            else:
                values.append(f"{pattern}) return 0 ;;")  # a value of the user's own
        value_case = "\n".join(f"                {v}" for v in values)
        otherwise = f'words="{flags} --help"'
        if command.takes_file:  # an option after a dash, else a file name
            otherwise = f'if [[ "$cur" == -* ]]; then {otherwise}; else files=1; fi'
        cases.append(
            f"        {command.name})\n"
            f'            case "$prev" in\n{value_case}\n'
            f"                *) {otherwise} ;;\n"
            "            esac ;;"
        )
    names = " ".join(c.name for c in found)
    body = "\n".join(cases)
    return f"""# bash completion for dropline (made by python -m dropline.manual bash)
_dropline() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local words="" files=0
    if [ "$COMP_CWORD" -eq 1 ]; then
        words="{names} --version --help"
    else
        case "${{COMP_WORDS[1]}}" in
{body}
        esac
    fi
    if [ "$files" = 1 ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}}
complete -F _dropline dropline
"""


def zsh_completion(parser: argparse.ArgumentParser | None = None) -> str:
    """The same for zsh, through its bash completion layer (bashcompinit)."""
    return (
        "#compdef dropline\n"
        "# zsh completion for dropline (made by python -m dropline.manual zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n"
        + bash_completion(parser).split("\n", 1)[1]
        # compinit loads this file as the function _dropline at the first Tab: the
        # lines above define the completion, and this one answers that first Tab.
        + '[[ -n "${funcstack[(r)_main_complete]}" ]] && _bash_complete -F _dropline "$@"\n'
    )


def main(argv: list[str]) -> int:
    makers = {"man": man_page, "bash": bash_completion, "zsh": zsh_completion}
    if len(argv) != 1 or argv[0] not in makers:
        print("usage: python -m dropline.manual man|bash|zsh", file=sys.stderr)
        return 2
    sys.stdout.write(makers[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
