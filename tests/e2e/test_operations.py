"""The operator's commands on the installed service: status as root, prune by its timer's unit."""

from __future__ import annotations

import json

from .container import DATA, DROPPER, UNIT, Container, archived_exactly_once, drop_script

CLI = "/opt/automation/dropline/bin/dropline"
PRUNE = "dropline-prune.service"


def test_status_sees_the_running_service(dropline: Container) -> None:
    dropline.sh(drop_script(3, "status-probe-", ".csv"), user=DROPPER)
    archived_exactly_once(dropline, 3, "status-probe-", ".csv")
    main_pid = int(dropline.wait_active()["MainPID"])
    doc = json.loads(dropline.run(CLI, "status", "--json").stdout)
    assert doc["daemon"] == {"running": True, "pid": main_pid}
    assert doc["counts"]["archived"] >= 3
    assert doc["counts"]["incoming"] == 0


def test_prune_unit_runs_under_its_sandbox(dropline: Container) -> None:
    """The retention unit (what the timer starts) can read and write what it must."""
    assert dropline.show("dropline-prune.timer", "UnitFileState")["UnitFileState"] in (
        "enabled",
        "disabled",
    )
    dropline.systemctl("start", PRUNE)  # Type=oneshot: returns once it finished
    props = dropline.show(PRUNE, "Result", "ExecMainStatus")
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), props
    log = dropline.run("journalctl", "-u", PRUNE, "-o", "cat", "--no-pager").stdout
    assert "Deleted 0 archived files" in log, log
    assert dropline.path(f"{DATA}/archive").is_dir()
    assert dropline.show(UNIT, "ActiveState")["ActiveState"] == "active"
