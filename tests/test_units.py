"""Static checks of the systemd units: `systemd-analyze verify` is clean, the exposure is low.

Neither needs systemd as PID 1.  As root, systemd-analyze would leave
/run/systemd/systemd-units-load on the host, so it runs as ``nobody`` (or, for
a non-root run, as the caller in a user namespace), on a copy of the units
that ``nobody`` can read wherever the checkout lives.  The program that
ExecStart= names exists only once installed, so verify runs in a private
mount namespace with an executable stand-in at that path; the end-to-end tier
verifies the installed units with the real program.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import REPO

UNITS = ("dropline.service", "dropline-prune.service", "dropline-prune.timer")
MAX_EXPOSURE = 2.0
PROGRAM = "/opt/automation/dropline/bin/dropline"  # ExecStart= of both services

# Runs as root in a private mount namespace: a tmpfs over /opt, holding an
# executable stand-in for the installed program, seen by nobody else.
STAND_IN = f"""
mount -t tmpfs -o mode=0755 dropline-stand-in /opt
mkdir -p {os.path.dirname(PROGRAM)}
printf '#!/bin/sh\\nexit 0\\n' > {PROGRAM}
chmod 0755 {PROGRAM}
"""

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture(scope="module")
def units() -> Iterator[Path]:
    """A copy of units/ where the user nobody can read it (pytest's tmp dirs are 0700)."""
    with tempfile.TemporaryDirectory(prefix="dropline-units-") as tmp:
        folder = Path(tmp) / "units"
        shutil.copytree(REPO / "units", folder)
        for path in (Path(tmp), folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield folder


def _unprivileged(*argv: str, stand_in: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ARGV as nobody (or as the non-root caller); with the stand-in if asked."""
    root = os.geteuid() == 0
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if root else []
    cmd = [*drop, *argv]
    if stand_in:
        # The mount needs root: real root, or root of a user namespace for a non-root run.
        ns = ["--mount"] if root else ["--user", "--map-root-user", "--mount"]
        setup = ["sh", "-euc", STAND_IN + 'exec "$@"', "sh"]
        cmd = ["unshare", *ns, "--propagation", "private", "--", *setup, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if stand_in and done.returncode != 0 and done.stderr.startswith("unshare:"):
        pytest.skip(f"namespaces are refused here: {done.stderr.strip()}")
    return done


def test_units_verify_clean(units: Path) -> None:
    """`systemd-analyze verify` on the units exits 0 and prints nothing on stderr."""
    done = _unprivileged(
        "systemd-analyze", "verify", *(str(units / u) for u in UNITS), stand_in=True
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_service_exposure_at_most_two(units: Path) -> None:
    """`systemd-analyze security --offline=true` rates dropline.service at most 2.0."""
    done = _unprivileged(
        "systemd-analyze", "security", "--offline=true", str(units / "dropline.service")
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for dropline\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{done.stdout}"
