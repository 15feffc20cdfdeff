"""A throw-away systemd container (boot-systemd.sh) and the dropline service inside it.

The container's root is an overlay over the host's ``/`` with a tmpfs on top:
the host's programs (systemd, python3, make) are visible inside, and nothing
written inside reaches the host.  Commands run inside through
``boot-systemd.sh exec`` with a clean environment (no MAKEFLAGS, PIP_* or
NOTIFY_SOCKET of the test run leak in).  Files inside are read from the host
through ``/proc/<PID 1>/root``, which is fast enough to poll.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from ..harness import wait_until

SCRIPT = Path(__file__).resolve().parent / "boot-systemd.sh"
CLEAN_ENV = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root")

DATA = "/opt/automation/data"
STATE_DIR = "/var/lib/dropline"
CONFIG = "/etc/dropline/dropline.yaml"
DROPIN_DIR = "/etc/systemd/system/dropline.service.d"
UNIT = "dropline.service"
DROPPER = "alice"  # made a member of "droppers" (not root) by the container fixture

# Seconds, printed in the summary at the end of the run.
TIMINGS: dict[str, float] = {}
# Lines of what a test measured (a table, say), printed in the summary too.
MEASURED: list[str] = []


class CommandFailedError(AssertionError):
    """A command inside the container exited non-zero where success was required."""


class Container:
    """One booted systemd, addressed by NAME under the state directory BASE."""

    def __init__(self, name: str, base: Path, max_lifetime: int = 600) -> None:
        self.name = name
        self.base = base
        self.env = dict(os.environ)
        self.env.update(SDPROBE_DIR=str(base), SDPROBE_MAX_LIFETIME=str(max_lifetime))
        # The host's environment must not steer the script (SDPROBE_NET=host, say).
        self.env.pop("SDPROBE_NET", None)
        self.env.pop("SDPROBE_BIND", None)

    def _script(
        self, *args: str, timeout: float, input_data: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(SCRIPT), *args],
            input=input_data,
            capture_output=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def start(self) -> str:
        """Boot; returns the script's report line.  Raises if the system did not come up."""
        done = self._script("start", self.name, timeout=180)
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(
                f"boot-systemd.sh start failed ({done.returncode}):\n{out}\n"
                f"console:\n{self.console_tail()}"
            )
        return out.strip()

    @property
    def booted(self) -> bool:
        return (self.base / self.name / "pid1").exists()

    def stop(self) -> str:
        done = self._script("stop", self.name, timeout=120)
        return (done.stdout + done.stderr).decode(errors="replace").strip()

    def console_tail(self, chars: int = 4000) -> str:
        log = self.base / self.name / "console.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    @property
    def root(self) -> Path:
        """The container's root directory, as the host sees it."""
        pid1 = (self.base / self.name / "pid1").read_text().strip()
        return Path(f"/proc/{pid1}/root")

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it."""
        return self.root / inside.lstrip("/")

    # --- running commands inside ---------------------------------------------

    def run(
        self,
        *cmd: str,
        input_data: bytes | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run CMD inside with a clean environment; text output captured."""
        done = self._script(
            "exec", self.name, *CLEAN_ENV, *cmd, timeout=timeout, input_data=input_data
        )
        result = subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise CommandFailedError(
                f"{shlex.join(cmd)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
        return result

    def sh(
        self, script: str, *args: str, user: str | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell SCRIPT inside (as USER when given, through runuser)."""
        cmd: tuple[str, ...] = ("sh", "-euc", script, "sh", *args)
        if user is not None:
            cmd = ("runuser", "-u", user, "--", *cmd)
        return self.run(*cmd, **kwargs)

    def popen_sh(self, script: str, *args: str, user: str | None = None) -> subprocess.Popen[bytes]:
        """Like sh(), in the background; the caller waits for it."""
        cmd: tuple[str, ...] = ("sh", "-euc", script, "sh", *args)
        if user is not None:
            cmd = ("runuser", "-u", user, "--", *cmd)
        return subprocess.Popen(
            [str(SCRIPT), "exec", self.name, *CLEAN_ENV, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def put(self, inside: str, data: bytes) -> None:
        """Write DATA to the file INSIDE (an existing file keeps its owner and mode)."""
        self.sh('cat > "$1"', inside, input_data=data)

    # --- systemd ---------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=90)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p PROPS UNIT`` as a mapping."""
        out = self.systemctl("show", *(f"--property={p}" for p in props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *matches: str, unit: str = UNIT) -> list[dict[str, Any]]:
        """Journal entries of UNIT matching MATCHES (``FIELD=value``), oldest first."""
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", unit, *matches).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_active(self, unit: str = UNIT, timeout: float = 30.0) -> dict[str, str]:
        """Wait until UNIT is active/running; returns its main properties."""
        props = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result")
        return wait_until(  # type: ignore[no-any-return]
            lambda: (p := self.show(unit, *props))["SubState"] == "running" and p,
            timeout,
            interval=0.1,
            what=f"{unit} active",
        )


def files_named(root: Path, prefix: str) -> list[Path]:
    """Every regular file under ROOT whose name starts with PREFIX."""
    return [p for p in root.rglob(prefix + "*") if p.is_file()]


def drop_script(count: int, prefix: str, suffix: str) -> str:
    """Shell that writes COUNT files PREFIX<i>SUFFIX into incoming/, each holding its number."""
    return (
        f"cd {DATA}/incoming; i=0; "
        f'while [ "$i" -lt {count} ]; do echo "$i" > "{prefix}$i{suffix}"; i=$((i+1)); done'
    )


def expected_names(count: int, prefix: str, suffix: str) -> list[str]:
    """The names drop_script(COUNT, PREFIX, SUFFIX) writes, sorted."""
    return sorted(f"{prefix}{i}{suffix}" for i in range(count))


def archived_exactly_once(
    container: Container, count: int, prefix: str, suffix: str, timeout: float = 60.0
) -> list[Path]:
    """Wait until every dropped file is in archive/ (once, unchanged); check none is elsewhere."""
    archive = container.path(f"{DATA}/archive")
    wait_until(
        lambda: len(files_named(archive, prefix)) >= count,
        timeout,
        interval=0.1,
        what=f"{count} files {prefix}* archived",
    )
    found = files_named(archive, prefix)
    assert sorted(p.name for p in found) == expected_names(count, prefix, suffix)
    for path in found:
        number = path.name.removeprefix(prefix).removesuffix(suffix)
        assert path.read_text() == f"{number}\n", f"{path.name} changed on its way"
    for folder in ("incoming", "working", "failed"):
        left = files_named(container.path(f"{DATA}/{folder}"), prefix)
        assert not left, f"{len(left)} files {prefix}* also in {folder}/: {left[:5]}"
    return found


def wait_quiet(seconds: float) -> None:
    """Watch for SECONDS: for checks that something does NOT happen within a window."""
    time.sleep(seconds)
