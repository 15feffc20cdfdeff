"""dropline as an installed service: readiness, a dropper's files and limits, journal, reload."""

from __future__ import annotations

from dropline.messages import message_id

from ..harness import wait_until
from .container import (
    CONFIG,
    DATA,
    DROPPER,
    STATE_DIR,
    TIMINGS,
    UNIT,
    Container,
    archived_exactly_once,
    drop_script,
)

# A changed pipeline for reload: *.txt now go through a stage named "mark".
RELOADED = """\
data_dir: /opt/automation/data
state_db: /var/lib/dropline/state.db
archive_layout: daily
pipelines:
  - name: texts
    match: "*.txt"
    stages:
      - name: mark
        command: ["true"]
  - name: passthrough
    match: "*"
    stages: []
"""

BROKEN = RELOADED.replace("stages: []", "stagez: []")


def test_start_is_ready_with_status(dropline: Container) -> None:
    """`systemctl start` returns once READY=1 came (within a second); status shows STATUS=."""
    dropline.systemctl("stop", UNIT)
    assert dropline.show(UNIT, "ActiveState")["ActiveState"] == "inactive"

    dropline.systemctl("start", UNIT)

    props = dropline.show(
        UNIT,
        "Type",
        "ActiveState",
        "SubState",
        "MainPID",
        "StatusText",
        "InvocationID",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    )
    # Type=notify: systemd leaves "activating" only on READY=1 from the main process.
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    ready_after = (
        int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])
    ) / 1e6
    TIMINGS["ExecStart -> READY=1 (systemd's clock)"] = ready_after
    assert 0 < ready_after < 1.0, f"READY=1 came {ready_after:.3f} s after start"
    ready = wait_until(
        lambda: dropline.journal(
            "EVENT=daemon.ready", f"_SYSTEMD_INVOCATION_ID={props['InvocationID']}"
        ),
        10,
        interval=0.1,
        what="daemon.ready in the journal",
    )
    assert ready[0]["_PID"] == props["MainPID"]

    assert "archived" in props["StatusText"], props["StatusText"]
    status = dropline.systemctl("status", UNIT).stdout
    assert "Active: active (running)" in status
    assert f'Status: "{props["StatusText"]}"' in status, status


def test_dropper_files_archived_and_dropper_confined(dropline: Container) -> None:
    """A member of droppers (not root) drops files that get archived, and can write nowhere else."""
    groups = dropline.run("id", "-nG", DROPPER).stdout.split()
    assert "droppers" in groups and "root" not in groups

    dropline.sh(drop_script(5, "alice-csv-", ".csv"), user=DROPPER)
    dropline.sh(drop_script(5, "alice-txt-", ".txt"), user=DROPPER)

    archived_exactly_once(dropline, 5, "alice-csv-", ".csv")
    archived_exactly_once(dropline, 5, "alice-txt-", ".txt")
    for folder in (f"{DATA}/working", f"{DATA}/archive", f"{DATA}/failed", STATE_DIR):
        tried = dropline.sh('echo sneaky > "$1/intruder"', folder, user=DROPPER, check=False)
        assert tried.returncode != 0, f"{DROPPER} could write into {folder}"
        assert "Permission denied" in tried.stderr, tried.stderr
        assert not dropline.path(f"{folder}/intruder").exists()


def test_journal_carries_event_fields(dropline: Container) -> None:
    """`journalctl -u dropline -o json` has each event with EVENT, ITEM, FILE, PIPELINE, STAGE."""
    dropline.sh(drop_script(1, "journal-probe-", ".csv"), user=DROPPER)
    archived_exactly_once(dropline, 1, "journal-probe-", ".csv")

    found = wait_until(
        lambda: dropline.journal("EVENT=file.archived", "FILE=journal-probe-0.csv"),
        10,
        interval=0.1,
        what="file.archived of journal-probe-0.csv in the journal",
    )
    assert len(found) == 1, found
    archived = found[0]
    assert archived["PIPELINE"] == "reports"
    assert archived["SYSLOG_IDENTIFIER"] == "dropline"
    assert archived["PRIORITY"] == "6"
    assert archived["MESSAGE"] == (
        f"archived journal-probe-0.csv to archive/{archived['TO']} (pipeline reports)"
    )
    assert archived["MESSAGE_ID"] == message_id("file.archived")
    assert archived["_TRANSPORT"] == "journal"  # native protocol, not parsed stderr lines

    trail = dropline.journal(f"ITEM={archived['ITEM']}")
    events = [e["EVENT"] for e in trail]
    assert events[0] == "file.claimed" and events[-1] == "file.archived", events
    assert all(e["FILE"] == "journal-probe-0.csv" for e in trail)
    assert all(e["PIPELINE"] == "reports" for e in trail)
    succeeded = {e["STAGE"] for e in trail if e["EVENT"] == "stage.succeeded"}
    assert succeeded == {"checksum", "count-lines"}, trail


def test_reload_applies_pipeline_and_refuses_broken_config(dropline: Container) -> None:
    """`systemctl reload` applies a changed pipeline; a broken file fails the reload
    visibly (exit non-zero, the error in `systemctl status`, and STATUS=), the
    service stays active on its previous configuration."""
    before = dropline.show(UNIT, "MainPID", "NRestarts")

    def count(event: str) -> int:
        return len(dropline.journal(f"EVENT={event}", f"_PID={before['MainPID']}"))

    reloaded = count("daemon.reloaded")
    dropline.put(CONFIG, RELOADED.encode())
    dropline.systemctl("reload", UNIT)  # exits 0: the daemon applied it
    # ExecReload= waited for the daemon's verdict: it is in the journal already.
    assert count("daemon.reloaded") == reloaded + 1

    dropline.sh(drop_script(1, "reload-new-", ".txt"), user=DROPPER)
    archived_exactly_once(dropline, 1, "reload-new-", ".txt")
    entry = wait_until(
        lambda: dropline.journal("EVENT=file.archived", "FILE=reload-new-0.txt"),
        10,
        interval=0.1,
        what="file.archived of reload-new-0.txt",
    )[0]
    assert entry["PIPELINE"] == "texts"
    assert dropline.journal(f"ITEM={entry['ITEM']}", "EVENT=stage.succeeded", "STAGE=mark")

    rejected = count("config.rejected")
    dropline.put(CONFIG, BROKEN.encode())
    refused = dropline.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0, refused
    assert f"Job for {UNIT} failed" in refused.stderr, refused.stderr
    wait_until(
        lambda: count("config.rejected") == rejected + 1, 10, interval=0.1, what="config.rejected"
    )
    error = dropline.journal("EVENT=config.rejected", f"_PID={before['MainPID']}")[-1]["ERROR"]
    assert CONFIG in error and "stagez" in error, error
    assert count("daemon.reloaded") == reloaded + 1
    line = BROKEN.splitlines().index("    stagez: []") + 1
    shown = f'dropline: error: {CONFIG}:{line}: pipelines[1].stagez: unknown key "stagez"'
    status = wait_until(
        lambda: (
            (out := dropline.systemctl("status", UNIT, check=False).stdout)
            and 'Status: "reload refused: ' in out
            and out
        ),
        10,
        interval=0.1,
        what="STATUS= of the refused reload in systemctl status",
    )
    assert shown in status, status  # the output of ExecReload=
    assert "running the previous configuration" in status, status
    assert "Active: active (running)" in status, status

    after = dropline.wait_active()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    dropline.sh(drop_script(1, "reload-kept-", ".txt"), user=DROPPER)
    archived_exactly_once(dropline, 1, "reload-kept-", ".txt")
    kept = wait_until(
        lambda: dropline.journal("EVENT=file.archived", "FILE=reload-kept-0.txt"),
        10,
        interval=0.1,
        what="file.archived of reload-kept-0.txt",
    )[0]
    assert kept["PIPELINE"] == "texts", "the refused file replaced the running configuration"

    # Valid when ExecReload= checks it, refused by the daemon: its reason, not the check's.
    moved = RELOADED.replace(
        "data_dir: /opt/automation/data", "data_dir: /opt/automation/elsewhere"
    )
    dropline.put(CONFIG, moved.encode())
    refused = dropline.systemctl("reload", UNIT, check=False)
    assert refused.returncode != 0, refused
    status = dropline.systemctl("status", UNIT, check=False).stdout
    assert f"dropline: error: {CONFIG}:1: data_dir: cannot change on reload" in status, status
    assert "the daemon refused it and keeps running its previous configuration" in status

    # Fixed: the reload succeeds and STATUS= no longer speaks of a refusal.
    dropline.put(CONFIG, RELOADED.encode())
    dropline.systemctl("reload", UNIT)
    wait_until(
        lambda: "reload refused" not in dropline.show(UNIT, "StatusText")["StatusText"],
        10,
        interval=0.1,
        what="STATUS= without the refusal",
    )
    after = dropline.wait_active()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])


def test_dropper_umask_no_longer_decides_readability(dropline: Container) -> None:
    """A file written in incoming/ is archived whatever the dropper's umask: incoming/'s
    default ACL gives automation read (and replaces the umask).  A file made owner-only
    elsewhere and moved in keeps its mode and no ACL: refused, left alone."""
    for umask in ("022", "027", "077"):
        dropline.sh(f"umask {umask}; echo 0 > {DATA}/incoming/umask-{umask}-0.csv", user=DROPPER)
        archived_exactly_once(dropline, 1, f"umask-{umask}-", ".csv")
    home = f"/home/{DROPPER}"
    dropline.run("install", "-d", "-o", DROPPER, "-g", DROPPER, "-m", "0755", home)
    dropline.sh(
        f"umask 077; echo private > {home}/umask-077.csv; mv {home}/umask-077.csv {DATA}/incoming/",
        user=DROPPER,
    )
    refused = wait_until(
        lambda: dropline.journal("EVENT=entry.refused", "FILE=umask-077.csv"),
        10,
        interval=0.1,
        what="entry.refused of umask-077.csv",
    )
    assert "not readable by the dropline user" in refused[0]["REASON"]
    assert dropline.path(f"{DATA}/incoming/umask-077.csv").exists()
    assert not dropline.path(f"{DATA}/working/umask-077.csv").exists()
    dropline.run("rm", "-f", f"{DATA}/incoming/umask-077.csv")
