"""The command line: run, check, reload, status, history, retry, prune.

Exit codes: 0 success; 1 runtime failure; 2 bad usage, bad configuration or
an unfit host (systemd's RestartPreventExitStatus=2 keeps it from looping on
a configuration that can never start).  A configuration or usage error prints
one clear message and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import (
    ConfigError,
    DaemonUnavailableError,
    DataLockedError,
    FatalIOError,
    HostError,
    NotFoundError,
    StateLockedError,
    StateUnavailableError,
)
from .service import SERVICE_PATH, SERVICE_USER

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = "/etc/dropline/dropline.yaml"


def _default_config() -> str:
    return os.environ.get("DROPLINE_CONFIG") or DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropline",
        description="A supervisor daemon for drop folders.",
        epilog="Examples:\n  dropline check --config /etc/dropline/dropline.yaml\n"
        "  dropline run --config /etc/dropline/dropline.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dropline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=_default_config(),
        metavar="PATH",
        help="configuration file (default: $DROPLINE_CONFIG or %(default)s)",
    )
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon in the foreground",
        description="Watch incoming/ and drive every file to archive/ or failed/. "
        "Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.",
    )
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="drain what is waiting (incoming/ and working/), then exit 0",
    )
    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate the configuration and the host, like nginx -t",
        description="Validate the configuration, the folders, their permissions and the "
        "state database, every stage, and what the file can only mean by mistake: a "
        "command's program the service cannot run (looked up with the service's PATH, as "
        "its user), a pipeline that can never receive a file. Exit 0 when all is well, "
        "2 otherwise.",
        epilog="Examples:\n  dropline check\n"
        "  dropline check --user dropper --path /opt/tools/bin:/usr/bin:/bin",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--user",
        default=SERVICE_USER,
        metavar="NAME",
        help="judge programs as this user, the unit's User= (default: %(default)s; "
        "when there is no such user, the current one, and check says so)",
    )
    check.add_argument(
        "--path",
        default=SERVICE_PATH,
        metavar="PATH",
        help="look programs up in this PATH, the unit's (default: systemd's for "
        "services, %(default)s)",
    )
    reload = sub.add_parser(
        "reload",
        parents=[common],
        help="have the running daemon read its configuration again; fail if it refuses",
        description="Check the configuration, then ask the running daemon to read it again "
        "and wait for its verdict: exit 0 when it applied the file (warnings name changes "
        "that only a restart applies), 2 with the error when it refused it (it keeps "
        "running its previous configuration), 1 when no daemon runs or none answered. "
        "The unit's ExecReload=, so `systemctl reload dropline` fails visibly.",
        epilog="Examples:\n  dropline reload\n"
        "  dropline reload --config /etc/dropline/dropline.yaml --pid $MAINPID  # ExecReload=",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reload.add_argument(
        "--pid",
        type=int,
        metavar="PID",
        help="the daemon's pid (systemd's $MAINPID): sent SIGHUP when the file does not "
        "load, so that the daemon logs and shows the refusal too",
    )
    reload.add_argument(
        "--wait",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long to wait for the daemon's verdict (default 20; systemd allows "
        "ExecReload= TimeoutStartSec=, 30 s)",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="counts, backlog, files in flight, throughput, recent failures",
        description="What the daemon is doing: counts per state, the backlog in incoming/, "
        "files in flight with their stage and age, files/s over the last minute, whether "
        "the daemon runs (and its pid), the last failures. Read-only; works whether or not "
        "the daemon runs.",
        epilog="Examples:\n  dropline status\n  dropline status --json | jq .counts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    history = sub.add_parser(
        "history",
        parents=[common],
        help="the provenance of a file: claim, every stage attempt, retries, its end",
        description="Every step of a file: its claim, each stage attempt with start, end, "
        "outcome and error, retries and their delays, where it ended and its content hash. "
        "By item id, or by file name (every item of that name, newest first).",
        epilog="Examples:\n  dropline history 01JD3Q6W5X0B8Z2Y7V4T9R1M0K\n"
        "  dropline history report-2026-11-28.csv --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument("item", metavar="ITEM_OR_NAME", help="an item id or a file name")
    history.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    retry = sub.add_parser(
        "retry",
        parents=[common],
        help="send failed files through their pipelines again",
        description="Move failed files back to working/ and run their pipeline from the "
        "first stage. The item keeps its id and its history; the new attempts are appended "
        "and failed/NAME.error.json goes away with the file. Safe while the daemon runs "
        "(the daemon applies the request); when it does not run, the files wait in "
        "working/ until it starts.",
        epilog="Examples:\n  dropline retry 01JD3Q6W5X0B8Z2Y7V4T9R1M0K\n"
        "  dropline retry --all-failed --pipeline reports --since 2h",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retry.add_argument("items", nargs="*", metavar="ITEM", help="item ids or file names")
    retry.add_argument("--all-failed", action="store_true", help="every failed file")
    retry.add_argument("--pipeline", metavar="P", help="with --all-failed: only this pipeline")
    retry.add_argument(
        "--since", metavar="T", help="with --all-failed: failed within T (2h) or since a date"
    )
    retry.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the running daemon to apply it (default 30)",
    )
    retry.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    prune = sub.add_parser(
        "prune",
        parents=[common],
        help="retention: delete archived files and their state beyond an age",
        description="Delete archived files (and, with --failed, failed ones) that finished "
        "longer ago than DURATION, with their rows in the state database, in small batches "
        "beside the running daemon. dropline-prune.timer runs it daily.",
        epilog="Examples:\n  dropline prune --older-than 30d --dry-run\n"
        "  dropline prune --older-than 90d --failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.add_argument("--failed", action="store_true", help="prune failed/ too")
    prune.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    return parser


def _duration_arg(flag: str, text: str) -> float:
    from .units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc} (for example 30d, 12h, 90m)") from None


def _output(args: argparse.Namespace, doc: dict[str, object], render: Callable[..., None]) -> None:
    from .console import Console, print_json

    if args.json:
        print_json(doc)
    else:
        render(doc, Console())


def _status(args: argparse.Namespace) -> int:
    from .commands import status
    from .config import load_config

    config = load_config(args.config)
    _output(args, status.collect(config), status.render)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from .commands import history
    from .config import load_config
    from .state import StateReader

    config = load_config(args.config)
    with StateReader(config.state_db) as reader:
        doc = history.collect(reader, args.item)
    _output(args, doc, history.render)
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    from .commands import parse_since, retry
    from .config import load_config

    if args.all_failed == bool(args.items):
        raise ConfigError("name the items to retry, or give --all-failed (not both)")
    if not args.all_failed and (args.pipeline or args.since):
        raise ConfigError("--pipeline and --since go with --all-failed")
    config = load_config(args.config)
    since = parse_since(args.since) if args.since else None
    ids = retry.select(config, args.items, args.all_failed, since, args.pipeline)
    doc = retry.run(config, ids, args.wait)
    _output(args, doc, retry.render)
    return EXIT_OK if doc["not_requeued"] == 0 else EXIT_FAILURE


def _reload(args: argparse.Namespace) -> int:
    from .commands import reload

    outcome = reload.run(args.config, args.pid, args.wait)
    verdict = outcome.verdict
    if verdict.applied:
        for warning in verdict.warnings:
            print(f"dropline: warning: {warning}", file=sys.stderr)
        names = ", ".join(verdict.pipelines) or "none"
        print(f"dropline: reloaded {verdict.config} (pipelines: {names})")
        return EXIT_OK
    print(f"dropline: error: {verdict.error}", file=sys.stderr)
    if outcome.asked:
        note = "the daemon refused it and keeps running its previous configuration"
    elif outcome.signalled is not None:
        note = (
            f"the daemon (pid {outcome.signalled}) was sent SIGHUP to read the file as well; "
            "it refuses it the same way and keeps running its previous configuration"
        )
    elif args.pid is not None:
        note = f"pid {args.pid} is not a running dropline daemon: it was not signalled"
    else:
        note = "not sent to the daemon, which keeps running its previous configuration"
    print(f"dropline: {note}", file=sys.stderr)
    return EXIT_USAGE


def _prune(args: argparse.Namespace) -> int:
    from .commands import prune
    from .config import load_config

    older_than = _duration_arg("--older-than", args.older_than)
    config = load_config(args.config)
    _output(args, prune.run(config, older_than, args.dry_run, args.failed), prune.render)
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .config import check_paths, load_config
    from .config.host import check_host
    from .pipeline import Routes, unreachable_pipelines
    from .programs import check_programs, service_user

    config = load_config(args.config)
    check_paths(config)
    Routes(config)  # resolves every stage: builtins, Python imports
    for line in check_host(config):
        print(f"dropline: {line}")
    # Not refused by the daemon itself (see the README), so all of them are told at once.
    user, note = service_user(args.user)
    if note:
        print(f"dropline: note: {note}")
    errors, notes = check_programs(config, args.path, user)
    errors += unreachable_pipelines(config)
    for line in notes:
        print(f"dropline: note: {line}")
    if errors:
        for error in sorted(errors, key=lambda e: e.line):
            print(f"dropline: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"dropline: configuration {config.path} is valid ({len(config.pipelines)} pipelines)")
    return EXIT_OK


def _run(config_path: str, exit_when_idle: bool) -> int:
    from .config import check_paths, load_config
    from .config.host import check_host
    from .log import configure
    from .loop.signals import Flags
    from .loop.startup import run_daemon

    config = load_config(config_path)
    configure(config.log_format)
    check_paths(config)
    check_host(config)
    flags = Flags()
    flags.install()  # before the start: a SIGTERM while it recovers is a stop
    run_daemon(config, flags=flags, exit_when_idle=exit_when_idle)
    global _daemon_ended
    _daemon_ended = True
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "check": _check,
        "run": lambda a: _run(a.config, a.exit_when_idle),
        "reload": _reload,
        "status": _status,
        "history": _history,
        "retry": _retry,
        "prune": _prune,
    }
    try:
        return commands[args.command](args)
    except (ConfigError, HostError) as exc:
        print(f"dropline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (
        StateLockedError,
        DataLockedError,
        StateUnavailableError,
        NotFoundError,
        DaemonUnavailableError,
    ) as exc:
        print(f"dropline: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except FatalIOError as exc:
        print(f"dropline: fatal: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except PermissionError as exc:
        print(f"dropline: error: permission denied: {exc.filename or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # `dropline status | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILURE


_daemon_ended = False  # set once `dropline run` has stopped: nothing is left to do


def entry() -> None:
    code = main()
    if _daemon_ended:
        _exit_without_teardown(code)
    sys.exit(code)


def _exit_without_teardown(code: int) -> None:
    """End the process once the daemon has stopped, without the interpreter's
    teardown (freeing every module and object one by one: tens of ms that
    delay the exit systemd waits for, and nothing else).  What an exit must
    do is done first: the exit handlers (the journal's last entries) and the
    standard streams flushed.  The database, the folders, the mover and the
    threads were closed by the daemon's own stop."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A reader gone, a stream closed: nothing left to keep.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


__all__ = ["entry", "main"]
