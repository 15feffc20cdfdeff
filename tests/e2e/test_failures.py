"""dropline under systemd when things go wrong: a frozen daemon, a stop mid-burst, bad config."""

from __future__ import annotations

import re
import time

from ..harness import wait_until
from .container import (
    CONFIG,
    DATA,
    DROPIN_DIR,
    DROPPER,
    TIMINGS,
    UNIT,
    Container,
    archived_exactly_once,
    drop_script,
    files_named,
    wait_quiet,
)

BURST = 2000


def _seconds(timespan: str) -> float:
    """A systemd time span as `systemctl show` prints it (``2s``, ``500ms``, ``1min 30s``)."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|min|h)\b", timespan)
    assert parts, f"not a time span: {timespan!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_watchdog_restarts_frozen_daemon_losing_nothing(dropline: Container) -> None:
    """A SIGSTOPped daemon is killed by the watchdog and restarted; every file ends archived."""
    dropline.sh(
        f"mkdir -p {DROPIN_DIR}\n"
        f"printf '[Service]\\nWatchdogSec=3s\\n' > {DROPIN_DIR}/50-e2e-watchdog.conf\n"
        f"systemctl daemon-reload\nsystemctl restart {UNIT}"
    )
    before = dropline.wait_active()
    props = dropline.show(UNIT, "WatchdogUSec", "InvocationID")
    assert props["WatchdogUSec"] == "3s"

    dropline.sh(drop_script(200, "before-freeze-", ".csv"), user=DROPPER)
    dropline.systemctl("kill", "--signal=SIGSTOP", UNIT)
    frozen_at = time.monotonic()
    dropline.sh(drop_script(20, "while-frozen-", ".txt"), user=DROPPER)

    restarts = int(before["NRestarts"]) + 1
    after = wait_until(
        lambda: (
            (p := dropline.show(UNIT, "SubState", "MainPID", "NRestarts"))["SubState"] == "running"
            and p["NRestarts"] == str(restarts)
            and p
        ),
        30,
        interval=0.1,
        what="the watchdog's kill and a restart",
    )
    TIMINGS["SIGSTOP -> restarted and READY (WatchdogSec=3s)"] = time.monotonic() - frozen_at
    assert after["MainPID"] != before["MainPID"]
    said = " | ".join(
        e.get("MESSAGE", "") for e in dropline.journal(f"INVOCATION_ID={props['InvocationID']}")
    )
    assert "Failed with result 'watchdog'" in said, said

    archived_exactly_once(dropline, 200, "before-freeze-", ".csv")
    archived_exactly_once(dropline, 20, "while-frozen-", ".txt")


def test_stop_during_burst_loses_nothing(dropline: Container) -> None:
    """`systemctl stop` while a burst is being processed: Result=success, then every file, once."""
    archive = dropline.path(f"{DATA}/archive")
    writer = dropline.popen_sh(drop_script(BURST, "burst-", ".csv"), user=DROPPER)
    try:
        wait_until(
            lambda: len(files_named(archive, "burst-")) >= 50,
            30,
            interval=0.05,
            what="the burst being processed",
        )
        t_stop = time.monotonic()
        dropline.systemctl("stop", UNIT)
        TIMINGS[f"systemctl stop during a burst of {BURST}"] = time.monotonic() - t_stop
        at_stop = len(files_named(archive, "burst-"))
    finally:
        output, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0, output.decode(errors="replace")

    props = dropline.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert props["ActiveState"] == "inactive"
    assert props["Result"] == "success", props
    assert props["ExecMainStatus"] == "0", props
    assert at_stop < BURST, "the burst was over before the stop: nothing was interrupted"

    t_start = time.monotonic()
    dropline.systemctl("start", UNIT)
    archived_exactly_once(dropline, BURST, "burst-", ".csv", timeout=90)
    TIMINGS[f"restart -> the other {BURST - at_stop} of the burst archived"] = (
        time.monotonic() - t_start
    )


def test_broken_config_fails_start_once_without_restart_loop(dropline: Container) -> None:
    """A configuration that cannot start fails `systemctl start` once (exit 2), with no restarts."""
    dropline.systemctl("stop", UNIT)
    dropline.put(CONFIG, b"data_dir: /opt/automation/data\npipelinez: []\n")
    dropline.systemctl("reset-failed", UNIT, check=False)

    started = dropline.systemctl("start", UNIT, check=False)

    assert started.returncode != 0, "systemctl start succeeded with a broken configuration"
    watched = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts", "InvocationID")
    props = dropline.show(UNIT, *watched, "RestartUSec")
    # "failed", not "auto-restart": RestartPreventExitStatus=2 kept systemd from scheduling one.
    assert (props["ActiveState"], props["SubState"]) == ("failed", "failed"), props
    assert (props["Result"], props["ExecMainStatus"], props["NRestarts"]) == (
        "exit-code",
        "2",
        "0",
    ), props
    wait_quiet(_seconds(props["RestartUSec"]) + 1.0)
    later = dropline.show(UNIT, *watched)
    assert later == {k: props[k] for k in watched}, "systemd restarted it after all"

    said = [
        e.get("MESSAGE", "")
        for e in dropline.journal(f"_SYSTEMD_INVOCATION_ID={props['InvocationID']}")
    ]
    assert any(CONFIG in m and "pipelinez" in m for m in said), said
    assert not any("Traceback" in m for m in said), said
