"""The end-to-end tier: one real systemd for the whole tier, dropline installed with `make install`.

The tier is skipped, with the reason, where it cannot run: not root, namespaces
refused, no systemd on the host, or a /usr/bin/python3 that cannot make a
virtual environment.  CI runs as root, so there it runs.  The container is
always stopped (a hard lifetime cap kills it anyway if the run is killed).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import REPO
from .container import CONFIG, DROPIN_DIR, DROPPER, TIMINGS, UNIT, Container

INSTALL_PYTHON = "/usr/bin/python3"  # what `make install` uses
# Debian ships ensurepip (which `python3 -m venv` needs) only in python3-venv.
MAKE_VENV = "import ensurepip, sys, venv; venv.main(sys.argv[1:])"
INSIDE = "/root/dropline-e2e"  # the source snapshot and the wheels, inside the container
# The configuration the service tests run with (tests/e2e/service.yaml; the source
# snapshot holds no tests), copied in after the install.
SERVICE_CONFIG = f"{INSIDE}/service.yaml"

# Before each test: the service tests' configuration, no drop-ins, the start limit
# reset, the service running.  Restarts only what a previous test changed.
RESET = f"""
example=$1; restart=0
if ! cmp -s "$example" {CONFIG}; then cat "$example" > {CONFIG}; restart=1; fi
if [ -d {DROPIN_DIR} ]; then rm -rf {DROPIN_DIR}; systemctl daemon-reload; restart=1; fi
systemctl is-active -q {UNIT} || restart=1
if [ "$restart" = 1 ]; then
  systemctl reset-failed {UNIT} 2>/dev/null || true
  systemctl restart {UNIT}
fi
"""


def _unavailable() -> str | None:
    """Why this tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: boots a real systemd as PID 1 of a throw-away container (CI is root)"
    if not os.access("/lib/systemd/systemd", os.X_OK):
        return "no /lib/systemd/systemd on this host (apt install systemd)"
    for tool in ("unshare", "nsenter", "setpriv", "script", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux, bsdutils, make)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"namespaces are refused here: unshare said {probe.stderr.strip()!r}"
    with tempfile.TemporaryDirectory() as tmp:
        venv = subprocess.run(
            [INSTALL_PYTHON, "-c", MAKE_VENV, "--without-pip", f"{tmp}/venv"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if venv.returncode != 0:
        return (
            f"{INSTALL_PYTHON} cannot make a virtual environment (apt install python3-venv): "
            f"{venv.stderr.strip()[-200:]!r}"
        )
    return None


def _snapshot(into: Path) -> tuple[Path, Path]:
    """A copy of the source, and wheels of dropline and its dependencies built from it.

    The container has no network, so the wheels are built here.  Both go into
    the container by copy: its /tmp is emptied at boot (tmpfiles' ``D /tmp``),
    and the checkout, which others may be editing, must not change under a
    running overlay.  The copy also keeps a stale build/ out of the wheel.
    """
    source = into / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "var", "wheelhouse", "tests", "*.egg-info",
            "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
        ),
    )  # fmt: skip
    wheels = into / "wheels"
    # As `make wheelhouse` does: the locked files, then dropline's own wheel.
    pip = [sys.executable, "-m", "pip", "--quiet"]
    lock = str(source / "requirements" / "run.txt")
    for argv in (
        [*pip, "download", "--require-hashes", "-r", lock, "--dest", str(wheels)],
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[3:5]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return source, wheels


def _copy_in(box: Container, folder: Path) -> str:
    """Copy FOLDER into the container under INSIDE; returns its path there."""
    archive = subprocess.run(
        ["tar", "-C", str(folder.parent), "-cf", "-", folder.name],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    box.run("mkdir", "-p", INSIDE)
    box.run("tar", "-C", INSIDE, "-xf", "-", input_data=archive, timeout=120)
    return f"{INSIDE}/{folder.name}"


def _service_log(box: Container) -> str:
    done = box.run("journalctl", "--no-pager", "-n", "60", "-u", UNIT, check=False)
    return done.stdout + done.stderr


@pytest.fixture(scope="package")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted systemd with dropline installed by `make install`, started and active."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    t0 = time.monotonic()
    source, wheels = _snapshot(tmp_path_factory.mktemp("snapshot"))
    TIMINGS["wheelhouse built (host)"] = time.monotonic() - t0
    # Unique on the host even across PID namespaces: the name also names cgroups there.
    name = f"dropline-e2e-{os.getpid()}-{secrets.token_hex(3)}"
    lifetime = 1800 if os.environ.get("DROPLINE_SOAK") == "long" else 600  # make soak: longer
    box = Container(name, tmp_path_factory.mktemp("systemd"), max_lifetime=lifetime)
    try:
        t_boot = time.monotonic()
        box.start()
        TIMINGS["container booted"] = time.monotonic() - t_boot
        t_install = time.monotonic()
        inside = {f.name: _copy_in(box, f) for f in (source, wheels)}
        box.run(
            "make", "-C", inside["source"], "install", f"WHEELHOUSE={inside['wheels']}", timeout=300
        )
        TIMINGS["copy in, make install"] = time.monotonic() - t_install
        box.put(SERVICE_CONFIG, (Path(__file__).parent / "service.yaml").read_bytes())
        box.run("useradd", "--groups", "droppers", DROPPER)
        t_start = time.monotonic()
        started = box.systemctl("start", UNIT, check=False)
        if started.returncode != 0:
            raise RuntimeError(f"systemctl start {UNIT} failed:\n{_service_log(box)}")
        box.wait_active()
        TIMINGS["systemctl start -> active"] = time.monotonic() - t_start
        TIMINGS["boot -> dropline active"] = time.monotonic() - t_boot
        yield box
    finally:
        if box.booted:
            box.stop()
        TIMINGS["tier wall time (wheelhouse to poweroff)"] = time.monotonic() - t0


@pytest.fixture
def dropline(container: Container) -> Container:
    """The container with dropline running tests/e2e/service.yaml, without drop-ins."""
    container.sh(RESET, SERVICE_CONFIG, timeout=90)
    container.wait_active()
    return container
