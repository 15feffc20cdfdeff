"""Tests of dropline.process with real subprocesses: exit codes, timeouts, process groups."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dropline import spawn
from dropline.process import CommandResult, describe, run_command

# A leaked Popen or temporary file shows up as a ResourceWarning: make it fail the test.
pytestmark = pytest.mark.filterwarnings("error")

SH = b"/bin/sh"
ENV = {b"PATH": b"/usr/bin:/bin", b"LC_ALL": b"C"}


def sh(
    script: str,
    *,
    timeout: float = 10.0,
    kill_grace: float = 1.0,
    output_cap: int = 64 * 1024,
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run a /bin/sh script through run_command with a small environment."""
    return run_command(
        [SH, b"-c", script.encode()],
        env=ENV,
        cwd=None,
        timeout=timeout,
        kill_grace=kill_grace,
        output_cap=output_cap,
        cancel=cancel,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll condition until it holds or timeout seconds have passed; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.01)
    return condition()


def pid_gone(pid: int) -> bool:
    """True if pid no longer runs; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] == "Z"


def read_pid(path: Path) -> int:
    """Wait for a pid file written by a test command and return its pid."""
    assert wait_until(path.exists), f"{path} never appeared"
    return int(path.read_text())


@pytest.fixture(autouse=True, params=["posix_spawn", "popen"])
def spawned_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: commands started by glibc's posix_spawn, and by Popen
    (where that glibc is not at hand)."""
    if request.param == "popen":
        monkeypatch.setattr(spawn, "_state", [None])
    return str(request.param)


def glibc_at_least(major: int, minor: int) -> bool:
    found = os.confstr("CS_GNU_LIBC_VERSION") or ""
    if not found.startswith("glibc "):
        return False
    numbers = tuple(int(part) for part in found.split()[1].split(".")[:2])
    return numbers >= (major, minor)


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Fail a test after which this process still has a child, running or unreaped."""
    yield
    with pytest.raises(ChildProcessError):
        # WNOWAIT: look, do not reap, so a leak is reported rather than hidden.
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)


def test_success_captures_stdout_and_stderr_in_order() -> None:
    """Exit 0 gives returncode 0 and both streams, merged in the order written."""
    result = sh("echo out; echo err >&2; echo again")
    assert result.returncode == 0
    assert result.signal is None
    assert not result.timed_out
    assert not result.cancelled
    assert result.output == "out\nerr\nagain\n"
    assert result.output_bytes == len(result.output)
    assert describe(result) == "exit status 0"


@pytest.mark.parametrize("status", [1, 3, 65, 255])
def test_nonzero_exit_status_is_returned_as_such(status: int) -> None:
    """A non-zero exit status comes back unchanged and is described as an exit status."""
    result = sh(f"echo failing; exit {status}")
    assert result.returncode == status
    assert result.signal is None
    assert result.output == "failing\n"
    assert describe(result) == f"exit status {status}"


def test_death_by_signal_gives_the_signal_and_no_returncode() -> None:
    """A command killed by a signal (not by us) reports the signal, not an exit status."""
    result = sh("kill -KILL $$")
    assert result.returncode is None
    assert result.signal == signal.SIGKILL
    assert not result.timed_out
    assert describe(result) == "killed by signal 9 (SIGKILL)"


def test_env_is_the_whole_environment_and_cwd_is_used(tmp_path: Path) -> None:
    """The child sees exactly the env given (nothing inherited) and runs in cwd."""
    result = run_command([b"/usr/bin/env"], env={b"ONLY": b"one"}, cwd=str(tmp_path), timeout=10.0)
    assert result.output == "ONLY=one\n"
    result = run_command([b"pwd"], env=ENV, cwd=bytes(tmp_path), timeout=10.0)
    assert result.output == f"{tmp_path}\n"


def test_posix_spawn_is_used_where_glibc_has_closefrom(spawned_by: str) -> None:
    """glibc 2.34 and later has everything the cheap start needs: it is not left
    unused by a mistake in looking it up."""
    if spawned_by != "posix_spawn" or not glibc_at_least(2, 34):
        pytest.skip("only with glibc 2.34 or later")
    assert spawn._spawner() is not None


def test_signals_start_at_their_defaults_and_unblocked() -> None:
    """The signals Python ignores (SIGPIPE, SIGXFSZ) are at their default in the
    command, none is blocked, and any other disposition is ours, as Popen leaves it."""
    ours = {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith(("SigIgn:", "SigBlk:"))
    }
    restored = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    # glibc's own signals (32 and 33: thread cancellation, set*id) are always at
    # their default in what posix_spawn starts; ignored here only where whoever
    # started the tests ignored them, they are not a disposition of ours.
    glibc = (1 << 31) | (1 << 32)
    result = run_command(
        [b"/bin/grep", b"-E", b"^Sig(Ign|Blk):", b"/proc/self/status"],
        env=ENV,
        cwd=None,
        timeout=10.0,
    )
    seen = {line.split(":")[0]: int(line.split()[1], 16) for line in result.output.splitlines()}
    seen["SigIgn"] &= ~glibc
    assert seen == {"SigIgn": ours["SigIgn"] & ~restored & ~glibc, "SigBlk": 0}


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([b"/bin/true", b"a\0b"], ENV),
        ([b"/bin/true"], {b"A": b"x\0y"}),
        ([b"/bin/true"], {b"A=B": b"x"}),
    ],
    ids=["nul-in-argument", "nul-in-value", "equals-in-name"],
)
def test_an_argument_or_variable_execve_cannot_carry_is_refused(
    argv: list[bytes], env: dict[bytes, bytes]
) -> None:
    """A NUL would cut an argument short without a word; it is refused instead, as
    an '=' in a variable's name is, and nothing runs."""
    with pytest.raises(ValueError):
        run_command(argv, env=env, cwd=None, timeout=10.0)


def test_stdin_is_dev_null() -> None:
    """A command reading stdin gets end of file at once instead of waiting for input."""
    result = sh("cat; echo read-done", timeout=5.0)
    assert result.returncode == 0
    assert result.output == "read-done\n"


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """On timeout a TERM-ignoring command and its TERM-ignoring grandchild are both killed."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"""
        trap "" TERM
        /bin/sh -c 'trap "" TERM
                    echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}
                    exec sleep 30' &
        while [ ! -e {pidfile} ]; do sleep 0.01; done
        echo started
        sleep 30
    """
    began = time.monotonic()
    result = sh(script, timeout=0.5, kill_grace=0.3)
    elapsed = time.monotonic() - began
    assert elapsed < 3.0
    assert result.timed_out
    assert not result.cancelled
    assert result.returncode is None
    assert result.signal == signal.SIGKILL  # TERM was ignored, so KILL ended it
    assert result.output == "started\n"
    assert describe(result).startswith("timed out after ")
    grandchild = read_pid(pidfile)
    assert wait_until(lambda: pid_gone(grandchild)), f"grandchild {grandchild} still runs"


def test_term_suffices_when_the_command_honours_it() -> None:
    """A command that exits on SIGTERM is not left to run out the kill grace."""
    result = sh("exec sleep 30", timeout=0.2, kill_grace=20.0)
    assert result.timed_out
    assert result.signal == signal.SIGTERM
    assert result.duration < 5.0


def test_grandchild_holding_output_open_neither_hangs_nor_survives(tmp_path: Path) -> None:
    """A background grandchild keeping stdout open after exit 0 is killed; we return at once."""
    pidfile = tmp_path / "bg.pid"
    result = sh(f"sleep 30 & echo $! > {pidfile}; echo done", timeout=20.0)
    assert result.duration < 2.0
    assert result.returncode == 0
    assert not result.timed_out
    assert result.output == "done\n"
    background = read_pid(pidfile)
    assert wait_until(lambda: pid_gone(background)), f"background {background} still runs"


def test_output_is_capped_to_head_and_tail() -> None:
    """About 5 MB of output keeps the first and last lines within output_cap plus the marker."""
    program = (
        "import sys; w = sys.stdout.write\n"
        "w('FIRST\\n'); w(('x' * 99 + '\\n') * 50000); w('LAST\\n')"
    )
    cap = 64 * 1024
    result = run_command(
        [sys.executable.encode(), b"-c", program.encode()],
        env={},
        cwd=None,
        timeout=10.0,
        output_cap=cap,
    )
    assert result.returncode == 0
    total = len("FIRST\n") + 100 * 50000 + len("LAST\n")
    assert result.output_bytes == total
    marker = f"\n[... {total - cap} bytes omitted ...]\n"
    assert marker in result.output
    assert len(result.output.encode()) == cap + len(marker)
    assert result.output.startswith("FIRST\nxxx")
    assert result.output.endswith("xxx\nLAST\n")


def test_output_cut_in_a_multibyte_character_is_replaced_not_an_error() -> None:
    """Invalid UTF-8, or a character cut by the cap, decodes to U+FFFD instead of failing."""
    # \377, "caf", é, ten dashes, é é: 20 bytes; a cap of 10 cuts the first é in half.
    result = sh(r"printf '\377caf\303\251----------\303\251\303\251'", output_cap=10)
    assert result.returncode == 0
    assert result.output_bytes == 20
    assert result.output == "\ufffdcaf\ufffd\n[... 10 bytes omitted ...]\n-\u00e9\u00e9"


def test_cancel_stops_a_long_command_quickly(tmp_path: Path) -> None:
    """Setting cancel while the command runs ends it within a fraction of a second."""
    started = tmp_path / "started"
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_when_started() -> None:
        if wait_until(started.exists):
            cancelled_at.append(time.monotonic())
            cancel.set()

    helper = threading.Thread(target=cancel_when_started)
    helper.start()
    result = sh(f"touch {started}; exec sleep 30", timeout=30.0, kill_grace=20.0, cancel=cancel)
    returned_at = time.monotonic()
    helper.join()
    assert cancelled_at, "the command never started"
    assert returned_at - cancelled_at[0] < 1.0
    assert result.cancelled
    assert not result.timed_out
    assert result.returncode is None
    assert result.signal == signal.SIGTERM
    assert describe(result) == "cancelled"


def test_cancel_set_before_start_runs_nothing(tmp_path: Path) -> None:
    """A stage cancelled before it starts is not started at all."""
    cancel = threading.Event()
    cancel.set()
    result = sh(f"touch {tmp_path / 'ran'}", cancel=cancel)
    assert result.cancelled
    assert result.returncode is None
    assert not (tmp_path / "ran").exists()


def test_missing_program_gives_127_with_the_error() -> None:
    """A program that does not exist is a result with status 127, not an exception."""
    result = run_command([b"/nonexistent/dropline-stage"], env=ENV, cwd=None, timeout=10.0)
    assert result.returncode == 127
    assert "No such file or directory" in result.output
    assert describe(result) == "exit status 127"


def test_program_not_on_path_gives_127() -> None:
    """A bare name is looked up in the PATH of the env given, and missing there is 127."""
    result = run_command([b"ls"], env={b"PATH": b"/nonexistent"}, cwd=None, timeout=10.0)
    assert result.returncode == 127


@pytest.mark.parametrize(
    ("mode", "content"),
    [(0o644, b"#!/bin/sh\necho hi\n"), (0o755, b"\x00\x01 not a program\n")],
    ids=["not-executable", "exec-format-error"],
)
def test_unexecutable_program_gives_126(tmp_path: Path, mode: int, content: bytes) -> None:
    """A file without execute permission (EACCES) or of no known format (ENOEXEC) gives 126."""
    program = tmp_path / "stage"
    program.write_bytes(content)
    program.chmod(mode)
    result = run_command([bytes(program)], env=ENV, cwd=None, timeout=10.0)
    assert result.returncode == 126
    assert result.output


def test_odd_names_reach_the_program_verbatim(tmp_path: Path) -> None:
    """Newlines, invalid UTF-8, a leading dash and $(...) are passed as bytes, never interpreted."""
    odd = [b"a\nb", b"\xff\xfe", b"-rf", b"$(touch pwned)", b"`touch pwned`; touch pwned", b"*"]
    program = b"import os, sys; print(' '.join(os.fsencode(a).hex() for a in sys.argv[1:]))"
    result = run_command(
        [sys.executable.encode(), b"-c", program, *odd], env={}, cwd=str(tmp_path), timeout=10.0
    )
    assert result.returncode == 0, result.output
    assert result.output.split() == [arg.hex() for arg in odd]
    assert not (tmp_path / "pwned").exists()


def test_printf_prints_a_shell_looking_name_as_is(tmp_path: Path) -> None:
    """A non-Python program gets the name verbatim too, and nothing is executed."""
    name = b"$(touch pwned)\n-x"
    result = run_command(
        [b"/usr/bin/printf", b"%s", name], env=ENV, cwd=str(tmp_path), timeout=10.0
    )
    assert result.output == name.decode()
    assert not (tmp_path / "pwned").exists()


def test_describe_names_signals_without_a_name() -> None:
    """describe copes with a signal number that has no name."""
    result = CommandResult(None, 200, False, False, "", 0, 0.1)
    assert describe(result) == "killed by signal 200"


def open_descriptors() -> set[int]:
    """The descriptors this process has open (the listing's own one left out)."""
    with os.scandir("/proc/self/fd") as entries:
        listed = {int(entry.name) for entry in entries}
    return {fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")}


def test_no_descriptor_is_left_open_whatever_the_ending(tmp_path: Path) -> None:
    """The output file, the pidfd and the rest are closed after every kind of ending."""
    sh("true")  # /dev/null, shared by every command's stdin, is opened once, here
    gc.collect()  # a file an earlier test dropped is closed now, not during this one
    before = open_descriptors()
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    results = [
        sh("echo out; echo err >&2"),
        sh("exit 3"),
        sh("exec sleep 30", timeout=0.2),
        sh("exec sleep 30", cancel=cancel),
        run_command([b"/nonexistent/program"], env=ENV, cwd=None, timeout=5.0),
    ]
    assert [r.returncode for r in results] == [0, 3, None, None, 127]
    assert results[2].timed_out and results[3].cancelled
    # None left open (one closed meanwhile is the test process's own: the worker's
    # that runs tests on two, say).
    assert open_descriptors() - before == set()


def test_the_command_inherits_only_stdin_stdout_and_stderr() -> None:
    """None of the daemon's descriptors reaches the command; its stdin is /dev/null."""
    sh("true")
    ours = " ".join(str(fd) for fd in sorted(open_descriptors()) if fd > 2)
    result = sh(
        f"readlink /proc/$$/fd/0; for n in {ours}; do [ -e /proc/$$/fd/$n ] && echo $n; done; true"
    )
    assert result.returncode == 0
    assert result.output == "/dev/null\n"


def test_without_pidfds_the_wait_still_sees_exit_timeout_and_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a kernel older than 5.3 (no pidfd_open) the wait falls back to waitid and
    every ending is still told apart."""
    monkeypatch.delattr(os, "pidfd_open")
    done = sh("echo done; exit 4")
    assert done.returncode == 4
    assert done.output == "done\n"
    timed_out = sh("exec sleep 30", timeout=0.2, kill_grace=5.0)
    assert timed_out.timed_out
    assert timed_out.signal == signal.SIGTERM
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    cancelled = sh("exec sleep 30", timeout=30.0, cancel=cancel)
    assert cancelled.cancelled
    assert cancelled.duration < 5.0
