"""The command line: ``dropline run`` and ``dropline check``.

Exit codes: 0 success; 1 runtime failure; 2 bad usage, bad configuration or
an unfit host (systemd's RestartPreventExitStatus=2 keeps it from looping on
a configuration that can never start).  A configuration or usage error prints
one clear message and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ConfigError, FatalIOError, HostError, StateLockedError

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
    sub.add_parser(
        "check",
        parents=[common],
        help="validate the configuration and the host, like nginx -t",
        description="Validate the configuration, the folders, their permissions and the "
        "state database. Exit 0 when all is well, 2 otherwise.",
    )
    prune = sub.add_parser(
        "prune",
        parents=[common],
        help="retention: delete archived files and their state beyond an age",
        description="Retention for archive/ and the state database. In this version it "
        "validates its arguments and the configuration, deletes nothing and exits 0 "
        "(the retention timer can already be enabled).",
    )
    prune.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.add_argument("--failed", action="store_true", help="prune failed/ too")
    return parser


def _prune(config_path: str, older_than: str) -> int:
    from .config import load_config
    from .units import parse_duration

    load_config(config_path)
    try:
        parse_duration(older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    print("dropline: prune: retention is not implemented in this version; nothing was deleted")
    return EXIT_OK


def _check(config_path: str) -> int:
    from .config import check_paths, load_config
    from .hostcheck import check_host
    from .pipeline import Routes

    config = load_config(config_path)
    check_paths(config)
    Routes(config)  # resolves every stage: builtins, Python imports
    for line in check_host(config):
        print(f"dropline: {line}")
    print(f"dropline: configuration {config.path} is valid ({len(config.pipelines)} pipelines)")
    return EXIT_OK


def _run(config_path: str, exit_when_idle: bool) -> int:
    from .config import check_paths, load_config
    from .daemon import Daemon
    from .hostcheck import check_host
    from .log import configure

    config = load_config(config_path)
    configure(config.log_format)
    check_paths(config)
    check_host(config)
    daemon = Daemon(config, exit_when_idle=exit_when_idle)
    daemon.install_signal_handlers()
    daemon.run()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "prune":
            return _prune(args.config, args.older_than)
        return _run(args.config, args.exit_when_idle)
    except (ConfigError, HostError) as exc:
        print(f"dropline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateLockedError as exc:
        print(f"dropline: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except FatalIOError as exc:
        print(f"dropline: fatal: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def entry() -> None:
    sys.exit(main())


__all__ = ["entry", "main"]
