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
    assert doc["daemon"] == {"running": True, "pid": main_pid, "data_folder_pid": main_pid}
    assert doc["counts"]["archived"] >= 3
    assert doc["counts"]["incoming"] == 0


def test_second_daemon_on_the_service_data_folder_is_refused(dropline: Container) -> None:
    """Another daemon of another state on /opt/automation/data, as the service's user, is
    refused naming the service's pid; a dropper cannot even open the folder to lock it."""
    main_pid = int(dropline.wait_active()["MainPID"])
    config = dropline.sh("cat /etc/dropline/dropline.yaml").stdout
    other = config.replace("/var/lib/dropline/state.db", "/tmp/other-state/state.db")
    assert other != config
    dropline.sh("mkdir -p /tmp/other-state", user="automation")
    dropline.sh('cat > "$1"', "/tmp/other-state/dropline.yaml", input_data=other.encode())
    second = dropline.run(
        "runuser", "-u", "automation", "--",
        CLI, "run", "--config", "/tmp/other-state/dropline.yaml",
        check=False, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1, second.stdout + second.stderr
    assert (
        "another dropline is running on the data folder /opt/automation/data "
        f"(pid {main_pid}, with another state database)"
    ) in second.stderr
    assert dropline.wait_active()["MainPID"] == str(main_pid)
    assert dropline.sh("ls /tmp/other-state").stdout.split() == ["dropline.yaml"]
    opened = dropline.run(
        "runuser", "-u", DROPPER, "--", "python3", "-c",
        "import os; os.open('/opt/automation/data', os.O_RDONLY | os.O_DIRECTORY)",
        check=False,
    )  # fmt: skip
    assert opened.returncode == 1 and "PermissionError" in opened.stderr, opened.stderr
    dropline.sh(drop_script(2, "after-refusal-", ".txt"), user=DROPPER)
    archived_exactly_once(dropline, 2, "after-refusal-", ".txt")
