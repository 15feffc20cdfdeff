"""Every file's end in the journal: a burst past journald's rate limit, as installed and without.

journald lets through at most RateLimitBurst= entries (10,000) per priority and
per RateLimitIntervalSec= (30 s) from one unit, times a factor that grows with
the space the journal may still use.  The burst here is sized from that space
to pass the limit, so the first half shows entries lost under journald's
default (restored by a drop-in), and the second half shows none lost under
the installed unit.  ``make soak`` (DROPLINE_SOAK=long) drains 100,000 files
as installed and prints what journald costs.
"""

from __future__ import annotations

import os
import time

import pytest

from ..harness import wait_until
from .container import CONFIG, DATA, DROPIN_DIR, DROPPER, TIMINGS, UNIT, Container

JOURNALD_BURST = 10_000  # journald's RateLimitBurst= when nothing sets it
PER_FILE = 2  # info entries of a file with no stage: file.claimed, file.archived
SOAK_FILES = 100_000
SUFFIX = ".dat"  # the service configuration's passthrough pipeline: no stage

# Files written as the dropper, as fast as Python writes them.
WRITE = """
import os, sys
count, prefix = int(sys.argv[1]), sys.argv[2]
os.chdir(sys.argv[3])
for i in range(count):
    with open(f"{prefix}{i}.dat", "x") as f:
        f.write(f"{i}\\n")
"""


def journald_bound(box: Container, limit: int) -> int:
    """The most entries of one priority journald lets through per window for LIMIT here.

    journald (burst_modulate) multiplies the burst by (log2(available) - 16) / 4
    when over 1 MiB is available, where available is at most SystemMaxUse=,
    10% of the journal's filesystem up to 4 GiB by default.
    """
    machine = box.run("cat", "/etc/machine-id").stdout.strip()
    persistent = box.run("test", "-d", f"/var/log/journal/{machine}", check=False)
    folder = "/var/log/journal" if persistent.returncode == 0 else "/run/log/journal"
    block, blocks = map(int, box.run("stat", "-f", "-c", "%S %b", folder).stdout.split())
    max_use = min(block * blocks // 10, 4 << 30)
    k = max_use.bit_length() - 1
    return limit * (k - 16) // 4 if k > 20 else limit


def burst(box: Container, count: int, prefix: str) -> float:
    """Drop COUNT files PREFIX<i>.dat; returns seconds until every one is in archive/."""
    t0 = time.monotonic()
    box.run(
        "runuser", "-u", DROPPER, "--", "python3", "-c", WRITE,
        str(count), prefix, f"{DATA}/incoming", timeout=600,
    )  # fmt: skip
    archived = f"find {DATA}/archive -name '{prefix}*' | wc -l"
    wait_until(
        lambda: int(box.sh(archived, timeout=120).stdout) >= count,
        max(60, count / 500),
        interval=0.5,
        what=f"{count} files {prefix}* archived",
    )
    return time.monotonic() - t0


def ends_in_journal(box: Container, prefix: str, pid: str) -> tuple[int, int]:
    """(file.archived, file.claimed) entries of files PREFIX* that the journal holds.

    Once a warning sent after them is in the journal: dropline sends its entries
    in order, and journald reads its socket in order, so by then journald has
    taken (or dropped) every one.  The warning is the refusal of a file only
    its owner can read; warnings are rate-limited apart from the info entries.
    """
    marker = f"{prefix}marker"
    # Made owner-only under a hidden name, then renamed in: written in place,
    # incoming/'s default ACL would leave it readable by automation whatever the umask.
    box.sh(
        f"cd {DATA}/incoming; echo x > .{marker}; chmod 0600 .{marker}; mv .{marker} {marker}",
        user=DROPPER,
    )
    wait_until(
        lambda: box.journal("EVENT=entry.refused", f"FILE={marker}"),
        60,
        interval=0.2,
        what=f"entry.refused of {marker} in the journal",
    )
    box.run("rm", "-f", f"{DATA}/incoming/{marker}")
    counted = []
    for event, verb in (("file.archived", "archived"), ("file.claimed", "claimed")):
        script = (
            f"journalctl --no-pager -u {UNIT} _PID={pid} EVENT={event} -o cat "
            f"| grep -c '^{verb} {prefix}' || true"
        )
        counted.append(int(box.sh(script, timeout=120).stdout))
    return counted[0], counted[1]


def restart_with(box: Container, dropin: str | None) -> str:
    """Restart the service with DROPIN as its only drop-in (or none); returns its PID."""
    box.run("rm", "-rf", DROPIN_DIR)
    if dropin is not None:
        box.run("mkdir", "-p", DROPIN_DIR)
        box.put(f"{DROPIN_DIR}/50-e2e-journal.conf", dropin.encode())
    box.systemctl("daemon-reload")
    box.systemctl("restart", UNIT)
    return box.wait_active()["MainPID"]


def config_error_in_journal(box: Container) -> bool:
    """Restart with a broken configuration at once; whether its error reached the journal."""
    good = box.path(CONFIG).read_bytes()
    box.put(CONFIG, b"data_dir: /opt/automation/data\npipelinez: []\n")
    try:
        box.systemctl("restart", UNIT, check=False)
        invocation = box.show(UNIT, "InvocationID")["InvocationID"]
        wait_until(
            lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "failed",
            30,
            interval=0.1,
            what="the start with a broken configuration failed",
        )
        said = [
            str(e.get("MESSAGE", "")) for e in box.journal(f"_SYSTEMD_INVOCATION_ID={invocation}")
        ]
        return any(CONFIG in m and "pipelinez" in m for m in said)
    finally:
        box.put(CONFIG, good)
        box.systemctl("reset-failed", UNIT, check=False)


def limited_then_installed(
    box: Container, journald_burst: int, files: int, tag: str
) -> dict[str, float]:
    """FILES under a drop-in with journald's rate limit for JOURNALD_BURST, then as installed.

    Asserts entries lost the first time and none the second; returns the figures.
    """
    figures: dict[str, float] = {}
    pid = restart_with(
        box, f"[Service]\nLogRateLimitIntervalSec=30s\nLogRateLimitBurst={journald_burst}\n"
    )
    figures["limited: archived in s"] = burst(box, files, f"{tag}limited-")
    archived, claimed = ends_in_journal(box, f"{tag}limited-", pid)
    figures["limited: file.archived entries"] = archived
    figures["limited: file.claimed entries"] = claimed
    assert archived < files, "journald's rate limit lost nothing: the burst is too small"
    # Not asserted: whether it is lost depends on where journald's window of 30 s began.
    figures["limited: the config error after it is in the journal"] = config_error_in_journal(box)

    pid = restart_with(box, None)
    journald = box.show("systemd-journald.service", "MainPID")["MainPID"]
    cpu = (_cpu_seconds(box, journald), _cpu_seconds(box, pid))
    figures["installed: archived in s"] = burst(box, files, f"{tag}installed-")
    figures["installed: journald CPU s"] = _cpu_seconds(box, journald) - cpu[0]
    figures["installed: dropline CPU s"] = _cpu_seconds(box, pid) - cpu[1]
    archived, claimed = ends_in_journal(box, f"{tag}installed-", pid)
    figures["installed: file.archived entries"] = archived
    figures["installed: file.claimed entries"] = claimed
    assert (archived, claimed) == (files, files)
    assert config_error_in_journal(box), "the configuration error after the burst was lost"
    return figures


def test_a_burst_past_journalds_limit_keeps_every_end(dropline: Container) -> None:
    """Lost under journald's rate limit; every end, and the error after them, as installed.

    Short for `make test`: the drop-in's limit is journald's default scaled down
    tenfold (1,000 entries per 30 s), and the burst passes it; the soak below
    does the same with journald's default itself and 100,000 files.
    """
    bound = journald_bound(dropline, 1000)
    files = bound * 13 // (10 * PER_FILE)  # info entries 1.3 times what journald lets through
    figures = limited_then_installed(dropline, 1000, files, "")
    TIMINGS.update(
        {f"journal burst of {files} files, {k}": v for k, v in figures.items() if " s" in k}
    )


def _cpu_seconds(box: Container, pid: str) -> float:
    """User + system CPU of PID inside the container (clock ticks of /proc/PID/stat)."""
    fields = box.run("cat", f"/proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(os.environ.get("DROPLINE_SOAK") != "long", reason="make soak only")
def test_soak_100000_files_every_end_in_the_journal(dropline: Container) -> None:
    """100,000 files under journald's default limit, then as installed, then with no journal."""
    bound = journald_bound(dropline, JOURNALD_BURST)
    assert bound * 1.2 < SOAK_FILES * PER_FILE, f"100,000 files do not pass journald's {bound}"
    figures = limited_then_installed(dropline, JOURNALD_BURST, SOAK_FILES, "soak-")
    pid = restart_with(dropline, "[Service]\nStandardError=null\n")
    cpu = _cpu_seconds(dropline, pid)
    figures["no journal (StandardError=null): archived in s"] = burst(
        dropline, SOAK_FILES, "soak-unlogged-"
    )
    figures["no journal: dropline CPU s"] = _cpu_seconds(dropline, pid) - cpu
    usage = dropline.run("journalctl", "--disk-usage").stdout.strip()
    print(f"\njournal soak, {SOAK_FILES} files, journald's bound {bound} per 30 s: {usage}")
    for what, value in figures.items():
        print(f"  {what:58} {value:10.2f}")
    TIMINGS.update({f"journal soak, {k}": v for k, v in figures.items() if " s" in k})
