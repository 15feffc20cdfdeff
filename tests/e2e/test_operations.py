"""The operator's commands on the installed service (prune by its timer: test_install.py)."""

from __future__ import annotations

import json

from .container import DROPPER, Container, archived_exactly_once, drop_script

CLI = "/opt/automation/dropline/bin/dropline"


def test_status_sees_the_running_service(dropline: Container) -> None:
    dropline.sh(drop_script(3, "status-probe-", ".csv"), user=DROPPER)
    archived_exactly_once(dropline, 3, "status-probe-", ".csv")
    main_pid = int(dropline.wait_active()["MainPID"])
    doc = json.loads(dropline.run(CLI, "status", "--json").stdout)
    assert doc["daemon"] == {"running": True, "pid": main_pid}
    assert doc["counts"]["archived"] >= 3
    assert doc["counts"]["incoming"] == 0
