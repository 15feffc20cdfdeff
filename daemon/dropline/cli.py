"""The command line: run, check, reload, try, status, top, history, retry, replay, pause,
resume, prune.

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

from .arguments import build_parser
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

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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


def _try(args: argparse.Namespace) -> int:
    from .commands import try_file
    from .config import load_config

    config = load_config(args.config)
    doc = try_file.collect(config, args.file, args.pipeline)
    _output(args, doc, try_file.render)
    return EXIT_OK if doc["outcome"] == "archived" else EXIT_FAILURE


def _status(args: argparse.Namespace) -> int:
    from .commands import status
    from .config import load_config

    config = load_config(args.config)
    _output(args, status.collect(config), status.render)
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    from .commands import top
    from .config import load_config
    from .state import StateReader

    if not args.interval > 0:
        raise ConfigError("--interval: a number of seconds above 0")
    config = load_config(args.config)
    with StateReader(config.state_db) as reader:
        if args.json or args.once or not sys.stdout.isatty():
            _output(args, top.collect(config, reader), top.render)
        else:
            top.watch(config, reader, args.interval, sys.stdout)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from .commands import history, parse_since
    from .config import load_config
    from .state import UNFINISHED, ItemQuery, StateReader

    config = load_config(args.config)
    states = {None: (), "unfinished": UNFINISHED}.get(args.outcome, (args.outcome,))
    filters = ItemQuery(
        since=parse_since(args.since) if args.since else None,
        until=parse_since(args.until, option="--until") if args.until else None,
        pipeline=args.pipeline,
        states=tuple(states),
    )
    with StateReader(config.state_db) as reader:
        doc = history.collect(reader, args.item, filters, args.page, args.per_page)
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


def _replay(args: argparse.Namespace) -> int:
    from .commands import parse_since, replay
    from .config import load_config

    if (args.glob is None) == (not args.items):
        raise ConfigError("name the items to replay, or give --glob (not both)")
    if args.glob is None and (args.pipeline or args.since):
        raise ConfigError("--pipeline and --since go with --glob")
    config = load_config(args.config)
    replay.check_stage(config, args.from_stage)
    since = parse_since(args.since) if args.since else None
    ids = replay.select(config, args.items, args.glob, since, args.pipeline)
    doc = replay.run(config, ids, args.from_stage, args.wait)
    _output(args, doc, replay.render)
    return EXIT_OK if doc["not_replayed"] == 0 else EXIT_FAILURE


def _gate(args: argparse.Namespace) -> int:
    from .commands import pause
    from .config import load_config

    config = load_config(args.config)
    reason = getattr(args, "reason", "")
    doc = pause.run(config, args.command, args.pipeline, reason, args.wait)
    _output(args, doc, pause.render)
    return EXIT_OK if doc["result"] != "pending" else EXIT_FAILURE


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

    try:
        config = load_config(config_path)
    except PermissionError as exc:
        # For the daemon an unfit host (exit 2): a restart cannot make it readable.
        unreadable = f"permission denied: cannot read the configuration {exc.filename}"
        raise HostError(unreadable) from None
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
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "check": _check,
        "run": lambda a: _run(a.config, a.exit_when_idle),
        "reload": _reload,
        "try": _try,
        "status": _status,
        "top": _top,
        "history": _history,
        "retry": _retry,
        "replay": _replay,
        "pause": _gate,
        "resume": _gate,
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
