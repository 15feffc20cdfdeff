"""The command line's arguments: each command, its options, their defaults and help.

Apart from ``cli.py`` (what each command does, and its exit codes) because it
is long and is what an operator reads in ``dropline --help``.
"""

from __future__ import annotations

import argparse
import os

from . import __version__
from .service import SERVICE_PATH, SERVICE_USER

DEFAULT_CONFIG = "/etc/dropline/dropline.yaml"


def _default_config() -> str:
    return os.environ.get("DROPLINE_CONFIG") or DEFAULT_CONFIG


def _positive(text: str) -> int:
    """A whole number of at least 1 (argparse's type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line's commands, options and help."""
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
        metavar="DIRS",
        help="look programs up in these directories, colon-separated as the unit's PATH "
        "(default: systemd's for services, %(default)s)",
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
    trial = sub.add_parser(
        "try",
        parents=[common],
        help="try a file: where it would go and what its stages make of it, nothing counted",
        description="Which pipeline FILE's name routes to and why, then its stages run once "
        "on a scratch copy: nothing moved, nothing recorded, the daemon's state untouched. "
        "Builtin loads run inside a transaction that is rolled back; publish and webhook say "
        "what they would do. A command or Python stage runs only if it says 'try: run' "
        "(the default is skip: it may send mail or call a service); try says which it "
        "skipped. Exit 0 when the file would be archived, 1 when it would fail (or be "
        "ignored or refused), 2 when it cannot be tried.",
        epilog="Examples:\n  dropline try orders-2026-11-28.csv\n"
        "  dropline try /tmp/sample.json --pipeline reports\n"
        "  dropline try orders.csv --json | jq .outcome",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trial.add_argument("file", metavar="FILE", help="the file to try (any path; it is copied)")
    trial.add_argument(
        "--pipeline", metavar="P", help="through this pipeline, whatever its name routes to"
    )
    trial.add_argument("--json", action="store_true", help="one JSON object, for scripts")
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
    top = sub.add_parser(
        "top",
        parents=[common],
        help="a live view: per pipeline and stage, files/s now, running, waiting, retrying",
        description="Redraws every second what dropline does now, from the state database "
        "read-only: per pipeline, files ended per second over the last 10 s and failed in the "
        "last hour; per pipeline and stage, attempts started per second, files running, "
        "waiting, waiting for a retry and the oldest one's age; what waits in incoming/. "
        "Ctrl-C quits. Not on a terminal (or with --once or --json) it prints one frame.",
        epilog="Examples:\n  dropline top\n  dropline top --once\n  dropline top --json | jq .",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="between frames (1)"
    )
    top.add_argument("--once", action="store_true", help="one frame, then exit")
    top.add_argument("--json", action="store_true", help="one frame as a JSON object")
    history = sub.add_parser(
        "history",
        parents=[common],
        help="the provenance of a file: claim, every stage attempt, retries, its end",
        description="Every step of a file: its claim, each stage attempt with start, end, "
        "outcome and error, retries and their delays, where it ended and its content hash. "
        "By item id, or by file name (every item of that name, newest first; a name as "
        "status or the journal printed it, or a path ending in it). A glob, or no name "
        "with filters, lists the items found, one line each, newest first, a page at a time.",
        epilog="Examples:\n  dropline history 01JD3Q6W5X0B8Z2Y7V4T9R1M0K\n"
        "  dropline history report-2026-11-28.csv --json\n"
        "  dropline history /opt/automation/data/archive/2026-11-28/report-2026-11-28.csv\n"
        "  dropline history 'orders-*.csv' --since 2h --outcome failed\n"
        "  dropline history --pipeline reports --since 2026-11-28 --until 2026-11-29 --page 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument(
        "item",
        metavar="ITEM_NAME_OR_GLOB",
        nargs="?",
        help="an item id, a file name or a path ending in it, or a glob such as 'orders-*'",
    )
    history.add_argument(
        "--since", metavar="WHEN", help="claimed since: a duration back (2h, 3d) or a date/time"
    )
    history.add_argument("--until", metavar="WHEN", help="claimed before: as --since")
    history.add_argument("--pipeline", help="only the items of this pipeline")
    history.add_argument(
        "--outcome",
        choices=("archived", "failed", "vanished", "unfinished"),
        help="only the items that ended so (unfinished: claimed and not yet ended)",
    )
    history.add_argument(
        "--page", type=_positive, default=1, help="which page of the items found (1, 2, ...)"
    )
    history.add_argument(
        "--per-page", type=_positive, default=20, metavar="N", help="items per page (20)"
    )
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
    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="send archived files through their pipeline again, as new items",
        description="Copy archived files (archive/ keeps them) into working/ as new items, "
        "each linked to the one it replays (see history), and run them through their "
        "pipeline again: from the first stage, or from --from-stage with the metadata the "
        "old item ended with. A new item has a new id, so a load keyed on the item loads its "
        "rows again. Safe while the daemon runs (the daemon applies the request); when it "
        "does not run, the copies wait in working/ until it starts.",
        epilog="Examples:\n  dropline replay 01JD3Q6W5X0B8Z2Y7V4T9R1M0K\n"
        "  dropline replay orders-2026-11-28.csv --from-stage load\n"
        "  dropline replay --glob 'orders-*.csv' --since 2026-11-28 --pipeline orders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("items", nargs="*", metavar="ITEM", help="item ids or file names")
    replay.add_argument("--glob", metavar="G", help="every archived file whose name matches G")
    replay.add_argument(
        "--since", metavar="WHEN", help="with --glob: claimed since (2h, 3d, or a date)"
    )
    replay.add_argument("--pipeline", metavar="P", help="with --glob: only this pipeline's")
    replay.add_argument(
        "--from-stage", metavar="STAGE", help="start at this stage (default: the first)"
    )
    replay.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the running daemon to apply it (default 30)",
    )
    replay.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    for verb, helped, described, example in (
        (
            "pause",
            "stop taking a pipeline's files until resume; they wait, no attempt spent",
            "Pause PIPELINE: its files are not claimed (they wait in incoming/), its files "
            "in working/ start no stage (the stages running end as they would; no attempt is "
            "spent waiting), files whose stages are done still end. Other pipelines go on. "
            "Kept across restarts, until dropline resume; shown by status, top and the "
            "unit's status line.",
            "  dropline pause orders --reason 'database maintenance until 14:00'",
        ),
        (
            "resume",
            "take a paused pipeline's files again",
            "Resume PIPELINE after dropline pause: its waiting files go on at once.",
            "  dropline resume orders",
        ),
    ):
        gate = sub.add_parser(
            verb,
            parents=[common],
            help=helped,
            description=described,
            epilog=f"Examples:\n{example}\n  dropline {verb} orders --json",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        gate.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's name")
        if verb == "pause":
            gate.add_argument("--reason", default="", help="why, for status and the log")
        gate.add_argument(
            "--wait",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="how long to wait for the running daemon to apply it (default 30)",
        )
        gate.add_argument("--json", action="store_true", help="one JSON object, for scripts")
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
