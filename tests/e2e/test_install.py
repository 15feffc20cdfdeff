"""What `make install` leaves: units that verify, a host `dropline check` accepts, the timer."""

from __future__ import annotations

import yaml
from packaging.utils import canonicalize_name

from ..harness import REPO
from ..test_lock import locked
from .conftest import INSIDE
from .container import CONFIG, Container

UNITS = ("dropline.service", "dropline-prune.service", "dropline-prune.timer")
PRUNE = "dropline-prune.service"
TIMER = "dropline-prune.timer"


def test_installed_units_verify_clean(dropline: Container) -> None:
    """`systemd-analyze verify` on the installed units, the real program in place, is clean."""
    done = dropline.run(
        "systemd-analyze", "verify", *(f"/etc/systemd/system/{u}" for u in UNITS), check=False
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_installed_environment_holds_exactly_the_run_lock(dropline: Container) -> None:
    """The program's environment: every package of requirements/run.txt at its locked
    version, and nothing else but dropline (no test tools)."""
    done = dropline.run(
        "/opt/automation/dropline/bin/python", "-m", "pip", "list", "--format=freeze"
    )
    pairs = (line.split("==", 1) for line in done.stdout.split())
    installed: dict[str, str] = {canonicalize_name(n): v for n, v in pairs}
    assert installed.pop("dropline", None) is not None
    assert installed == locked(REPO / "requirements" / "run.txt")


def test_dropline_is_on_the_path_after_install(dropline: Container) -> None:
    """`dropline` runs by its name from a login shell's PATH, as the README shows it."""
    done = dropline.sh(
        "PATH=/usr/local/bin:$PATH; command -v dropline; dropline --version", check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "/usr/local/bin/dropline"
    assert "dropline" in done.stdout.splitlines()[1]
    link = dropline.run("readlink", "/usr/local/bin/dropline").stdout.strip()
    assert link == "/opt/automation/dropline/bin/dropline"


def test_the_manual_page_and_the_completions_are_installed(dropline: Container) -> None:
    """dropline(1) where man looks, and a bash completion that completes the commands."""
    page = dropline.run("cat", "/usr/local/share/man/man1/dropline.1").stdout
    assert page.startswith(".TH DROPLINE 1") and ".SS history" in page
    done = dropline.run(
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/dropline; "
        "COMP_WORDS=(dropline hist); COMP_CWORD=1; _dropline; echo ${COMPREPLY[*]}",
        check=False,
    )
    assert done.stdout.split() == ["history"], done.stdout + done.stderr
    zsh = dropline.run("cat", "/usr/local/share/zsh/site-functions/_dropline").stdout
    assert zsh.startswith("#compdef dropline")


def test_installed_host_passes_check(dropline: Container) -> None:
    """`dropline check`, run as the service user on the installed host, accepts it."""
    done = dropline.run(
        "runuser",
        "-u",
        "automation",
        "--",
        "/opt/automation/dropline/bin/dropline",
        "check",
        "--config",
        CONFIG,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_retention_timer_listed_and_its_service_succeeds(dropline: Container) -> None:
    """The retention timer is listed by `systemctl list-timers`; its service runs successfully."""
    dropline.systemctl("enable", "--now", TIMER)
    props = dropline.show(TIMER, "ActiveState", "UnitFileState")
    assert props == {"ActiveState": "active", "UnitFileState": "enabled"}

    timers = dropline.systemctl("list-timers", "--all").stdout
    listed = [line for line in timers.splitlines() if TIMER in line]
    assert listed and PRUNE in listed[0], timers

    dropline.systemctl("start", PRUNE)  # Type=oneshot: returns once it has run
    props = dropline.show(PRUNE, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert props == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",  # CLD_EXITED
        "ExecMainStatus": "0",
    }, props
    # It ran for real under its sandbox: read the state, walked archive/.
    log = dropline.run("journalctl", "-u", PRUNE, "-o", "cat", "--no-pager").stdout
    assert "Deleted 0 archived files" in log, log


def test_installed_example_configuration_passes_check(dropline: Container) -> None:
    """The example configuration as installed (with its pipelines' own stages) is valid."""
    assert dropline.path("/opt/automation/pipelines/orders/orders_notify.py").is_file()
    assert dropline.path("/opt/automation/pipelines/template/my_stage.py").is_file()
    example = "/etc/dropline/example.yaml"  # where the service user can read it
    dropline.run("install", "-m", "0644", f"{INSIDE}/source/config/dropline.yaml", example)
    done = dropline.run(
        "runuser",
        "-u",
        "automation",
        "--",
        "/opt/automation/dropline/bin/dropline",
        "check",
        "--config",
        example,
        check=False,
    )
    dropline.run("rm", "-f", example)
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_judges_programs_as_the_service_user(dropline: Container) -> None:
    """As root, `dropline check` still finds what the automation user cannot run."""
    config = {
        # Root's own folders: root checks its own tree, and judges programs for automation.
        "data_dir": "/var/tmp/check/data",
        "state_db": "/var/tmp/check/state/state.db",
        "pipelines": [
            {
                "name": "tools",
                "match": "*",
                "stages": [
                    {"name": "open", "command": ["/opt/check-tools/open.sh", "{path}"]},
                    {"name": "closed", "command": ["/opt/check-tools/private/tool.sh"]},
                    {"name": "found", "command": ["sha256sum", "{path}"]},
                ],
            }
        ],
    }
    example = "/etc/dropline/check-tools.yaml"
    dropline.put(example, yaml.safe_dump(config, sort_keys=False).encode())
    dropline.sh(
        "install -d -m 0755 /var/tmp/check/data /opt/check-tools && "
        "install -d -m 0700 /var/tmp/check/state /opt/check-tools/private && "
        "printf '#!/bin/sh\\n' > /opt/check-tools/open.sh && "
        "chmod 0755 /opt/check-tools/open.sh && "
        "cp /opt/check-tools/open.sh /opt/check-tools/private/tool.sh"
    )
    try:
        done = dropline.run(
            "/opt/automation/dropline/bin/dropline", "check", "--config", example, check=False
        )
    finally:
        dropline.run("rm", "-rf", example, "/opt/check-tools", "/var/tmp/check")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no user" not in done.stdout  # the real service user, not a fallback
    (error,) = done.stderr.splitlines()
    uid = dropline.run("id", "-u", "automation").stdout.strip()
    assert error.startswith(f"dropline: error: {example}:"), error
    assert "pipelines[0].stages[1].command[0]" in error
    assert (
        f"cannot be started by automation (uid {uid}): "
        "the directory /opt/check-tools/private (mode 0700, owner root, group root)"
    ) in error
