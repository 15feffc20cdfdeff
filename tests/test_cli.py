"""The command line: bad configurations exit 2 with one clear message and no traceback."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dropline.programs import SERVICE_PATH, SERVICE_USER

from .harness import REPO, Tree, run_cli

GOOD = """
- name: all
  match: "*"
"""

# (description, configuration text with {data} and {state} placeholders, expected fragments)
BAD_CONFIGS: list[tuple[str, str, list[str]]] = [
    (
        "unknown key with suggestion",
        "data_dir: {data}\nstate_db: {state}\npipelines_:\n  - {{name: a, match: '*'}}\n",
        [":3:", "pipelines_", 'did you mean "pipelines"'],
    ),
    (
        "wrong type",
        "data_dir: {data}\nstate_db: {state}\nworkers: four\n"
        "pipelines:\n  - {{name: a, match: '*'}}\n",
        [":3:", "workers", "integer"],
    ),
    (
        "bad glob",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n  - name: a\n    match: '[abc'\n",
        [":5:", "match", "["],
    ),
    (
        "duplicate pipeline names",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n"
        "  - {{name: a, match: '*'}}\n  - {{name: a, match: '*.x'}}\n",
        ["pipelines[1].name", "duplicate", "4"],
    ),
    (
        "command as a shell string",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n  - name: a\n    match: '*'\n"
        "    stages:\n      - {{name: s, command: 'rm -rf {{path}}'}}\n",
        [":7:", "command", "argv list"],
    ),
    (
        "unknown builtin",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n  - name: a\n    match: '*'\n"
        "    stages:\n      - {{name: s, builtin: nosuch}}\n",
        [":7:", "nosuch", "sha256"],
    ),
    (
        "python stage that cannot be imported",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n  - name: a\n    match: '*'\n"
        "    stages:\n      - {{name: s, python: 'no_such_module_x:run'}}\n",
        [":7:", "no_such_module_x", "ModuleNotFoundError"],
    ),
    (
        "missing data directory",
        "data_dir: {data}/nope\nstate_db: {state}\npipelines:\n  - {{name: a, match: '*'}}\n",
        [":1:", "data_dir", "nope"],
    ),
    (
        "state path is a directory",
        "data_dir: {data}\nstate_db: {statedir}\npipelines:\n  - {{name: a, match: '*'}}\n",
        [":2:", "state_db"],
    ),
    ("invalid YAML", "data_dir: {data}\nstate_db: [unclosed\n", ["dropline.yaml", "line"]),
    (
        "unknown placeholder",
        "data_dir: {data}\nstate_db: {state}\npipelines:\n  - name: a\n    match: '*'\n"
        "    stages:\n      - {{name: s, command: ['nosuchprog', '{{paht}}']}}\n",
        [":7:", "command[1]", 'unknown placeholder "{paht}"', 'did you mean "{path}"'],
    ),
]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    ("text", "fragments"),
    [(text, fragments) for _, text, fragments in BAD_CONFIGS],
    ids=[desc for desc, _, _ in BAD_CONFIGS],
)
def test_bad_configuration_exits_2_without_traceback(
    tree: Tree, command: str, text: str, fragments: list[str]
) -> None:
    """Each bad configuration: exit 2, a message naming file, line and key, no traceback."""
    tree.config.write_text(
        text.format(data=tree.data, state=tree.state_db, statedir=tree.state_db.parent)
    )
    result = run_cli(command, "--config", str(tree.config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert str(tree.config) in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


def test_missing_configuration_file(tree: Tree) -> None:
    """A configuration file that does not exist: exit 2 naming it."""
    result = run_cli("check", "--config", str(tree.root / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment(tree: Tree) -> None:
    """$DROPLINE_CONFIG is the default for --config."""
    tree.write_config(GOOD)
    result = run_cli("check", env={"DROPLINE_CONFIG": str(tree.config)})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("sub", ["working", "archive", "failed"])
def test_insecure_folder_is_refused(tree: Tree, sub: str) -> None:
    """A group-writable working/, archive/ or failed/ is refused with exit 2 naming it."""
    tree.write_config(GOOD)
    os.chmod(tree.data / sub, 0o775)
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(tree.config))
        assert result.returncode == 2
        assert str(tree.data / sub) in result.stderr
        assert "writable by its group" in result.stderr
        line = tree.config.read_text().splitlines().index(f"data_dir: {tree.data}") + 1
        assert f"{tree.config}:{line}: data_dir: " in result.stderr  # the key that brings it


def test_usage_error_exits_2(tree: Tree) -> None:
    """An unknown subcommand is a usage error: exit 2."""
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_prune_before_the_first_run_deletes_nothing(tree: Tree) -> None:
    """The retention timer may fire before the daemon ever ran: nothing to do, exit 0."""
    tree.write_config(GOOD)
    (tree.archive / "keep.txt").write_bytes(b"x")
    result = run_cli("prune", "--config", str(tree.config), "--older-than", "30d")
    assert result.returncode == 0, result.stderr
    assert "no state database yet" in result.stdout
    assert (tree.archive / "keep.txt").exists()
    assert not tree.state_db.exists(), "prune does not create the database"
    bad = run_cli("prune", "--config", str(tree.config), "--older-than", "soon")
    assert bad.returncode == 2
    assert "--older-than" in bad.stderr


@pytest.mark.parametrize(
    ("target", "mode"),
    [("working", 0o757), ("archive", 0o707), ("failed", 0o777), ("state", 0o775)],
)
def test_insecure_tree_is_refused_naming_the_path(tree: Tree, target: str, mode: int) -> None:
    """Writable by others (or the state directory by its group): exit 2, the path named."""
    tree.write_config(GOOD)
    path = tree.state_db.parent if target == "state" else tree.data / target
    os.chmod(path, mode)
    result = run_cli("run", "--config", str(tree.config))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "writable by" in result.stderr
    assert "Traceback" not in result.stderr


def test_folder_owned_by_another_user_is_refused(tree: Tree) -> None:
    """A protected folder owned by someone else (who could chmod it) is refused."""
    if os.geteuid() != 0:
        pytest.skip("changing a folder's owner needs root")
    tree.write_config(GOOD)
    os.chown(tree.data / "archive", 65534, 65534)
    result = run_cli("check", "--config", str(tree.config))
    assert result.returncode == 2
    assert "owned by uid 65534" in result.stderr
    assert str(tree.data / "archive") in result.stderr


# --- programs of command stages, as the service would run them ----------------------


def command_config(tree: Tree, *programs: str) -> list[int]:
    """A configuration whose pipeline runs PROGRAMS; the line of each program."""
    lines = [f"data_dir: {tree.data}", f"state_db: {tree.state_db}", "pipelines:"]
    lines += ["  - name: work", "    match: '*'", "    stages:"]
    where = []
    for i, program in enumerate(programs):
        lines.append(f"      - name: s{i}")
        where.append(len(lines) + 1)
        lines.append(f"        command: [{json.dumps(program)}, '{{path}}']")
    tree.config.write_text("\n".join(lines) + "\n")
    return where


def judged_as() -> str:
    """A user other than the one running the tests when that is root, else the tester."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam("nobody").pw_name
    except KeyError:
        pytest.skip("no user nobody to judge programs for")


@pytest.fixture
def tools() -> Iterator[Path]:
    """A folder every user can search (tmp_path's parents are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="dropline-tools-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder)


def script(path: Path, mode: int, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


def check(tree: Tree, *options: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = run_cli("check", "--config", str(tree.config), *options, env=env)
    assert "Traceback" not in result.stderr + result.stdout
    return result.returncode, result.stdout, result.stderr


def test_a_program_not_in_the_services_path_is_an_error(tree: Tree, tools: Path) -> None:
    """Found in the caller's PATH but not in the unit's: exit 2, the file, line and key."""
    script(tools / "dropline-test-tool", 0o755)
    (line,) = command_config(tree, "dropline-test-tool")
    caller = {"PATH": f"{tools}:{os.environ['PATH']}"}
    code, _, err = check(tree, "--user", judged_as(), env=caller)
    assert code == 2, err
    assert err.startswith(
        f"dropline: error: {tree.config}:{line}: pipelines[0].stages[0].command[0]: "
    )
    assert (
        f'program "dropline-test-tool" is not found in the service\'s PATH ({SERVICE_PATH})' in err
    )
    # With the PATH the unit would have if it set one, the same configuration is valid.
    code, out, err = check(tree, "--user", judged_as(), "--path", f"{tools}:/usr/bin:/bin")
    assert code == 0, err
    assert "is valid" in out


def test_nosuchprog_is_reported_and_a_found_one_is_not(tree: Tree) -> None:
    """Each program is judged on its own: only the missing one is named."""
    lines = command_config(tree, "nosuchprog", "sh", "/bin/sh")
    code, out, err = check(tree, "--user", judged_as())
    assert code == 2, out + err
    errors = err.splitlines()
    assert len(errors) == 1, err
    assert f"{tree.config}:{lines[0]}: pipelines[0].stages[0].command[0]: " in errors[0]
    assert 'program "nosuchprog" is not found' in errors[0]
    assert "is valid" not in out


def test_a_script_without_the_execute_bit_is_an_error(tree: Tree, tools: Path) -> None:
    """Mode 0644: exec would fail with EACCES (exit 126) for every file."""
    tool = script(tools / "tool.sh", 0o644)
    (line,) = command_config(tree, str(tool))
    code, _, err = check(tree, "--user", judged_as())
    assert code == 2, err
    assert f"{tree.config}:{line}: pipelines[0].stages[0].command[0]: " in err
    assert f"{tool} (mode 0644, " in err and "is not executable by it" in err
    tool.chmod(0o755)
    assert check(tree, "--user", judged_as())[0] == 0


def test_a_program_in_a_folder_the_user_cannot_search_is_an_error(tree: Tree, tools: Path) -> None:
    """Executable itself, but behind a folder of mode 0700 that is not the user's."""
    private = tools / "private"
    private.mkdir(mode=0o755)
    tool = script(private / "tool.sh", 0o755)
    (line,) = command_config(tree, str(tool))
    user = judged_as()
    private.chmod(0o755)
    assert check(tree, "--user", user)[0] == 0
    if os.geteuid() == 0:
        private.chmod(0o700)  # root's: nobody may not search it
    else:
        private.chmod(0o600)  # the tester's own, without x: the kernel refuses the tester too
    code, _, err = check(tree, "--user", user)
    assert code == 2, err
    assert f"{tree.config}:{line}: pipelines[0].stages[0].command[0]: " in err
    assert f"the directory {private} (mode 0" in err and "cannot be searched by it" in err


def test_the_group_of_a_program_counts(tree: Tree, tools: Path) -> None:
    """Mode 0750: runnable by a member of the file's group, refused to anyone else."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another group needs root")
    nobody = pwd.getpwnam(judged_as())
    tool = script(tools / "tool.sh", 0o750)
    command_config(tree, str(tool))
    os.chown(tool, 0, nobody.pw_gid)
    assert check(tree, "--user", nobody.pw_name)[0] == 0
    os.chown(tool, 0, 0)
    tool.chmod(0o750)
    code, _, err = check(tree, "--user", nobody.pw_name)
    assert code == 2 and "(mode 0750, owner root, group root) is not executable" in err


def test_a_symlink_is_followed_through_folders_the_user_must_search(
    tree: Tree, tools: Path
) -> None:
    """A link in an open folder to a program in a closed one: the closed one is named."""
    if os.geteuid() != 0:
        pytest.skip("a folder the tester can search but another user cannot needs root")
    private = tools / "private"
    private.mkdir(mode=0o700)
    tool = script(private / "real.sh", 0o755)
    (tools / "link").symlink_to(tool)
    command_config(tree, str(tools / "link"))
    code, _, err = check(tree, "--user", judged_as())
    assert code == 2 and f"the directory {private} (mode 0700" in err


def test_a_script_whose_interpreter_is_missing_is_an_error(tree: Tree, tools: Path) -> None:
    """exec of a script whose "#!" names no program fails with ENOENT: exit 127."""
    tool = script(tools / "tool.py", 0o755, "#!/usr/bin/dropline-no-such-python\n")
    viaenv = script(tools / "tool2", 0o755, "#!/usr/bin/env dropline-no-such-tool\n")
    lines = command_config(tree, str(tool), str(viaenv))
    code, _, err = check(tree, "--user", judged_as())
    assert code == 2, err
    first, second = err.splitlines()
    assert f":{lines[0]}: " in first and "/usr/bin/dropline-no-such-python does not exist" in first
    assert f":{lines[1]}: " in second
    assert "dropline-no-such-tool is not found in the service's PATH" in second


def test_a_relative_program_path_is_an_error(tree: Tree) -> None:
    """A command runs in the temporary directory: "bin/tool" would be looked up there."""
    (line,) = command_config(tree, "bin/tool")
    code, _, err = check(tree, "--user", judged_as())
    assert code == 2
    assert f":{line}: pipelines[0].stages[0].command[0]: " in err and "absolute path" in err


def test_a_missing_user_falls_back_to_the_current_one_and_says_so(tree: Tree) -> None:
    """On a machine without the service user, programs are judged for whoever runs check."""
    command_config(tree, "sh")
    code, out, err = check(tree, "--user", "dropline-no-such-user")
    assert code == 0, err
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert (
        f'no user "dropline-no-such-user" here; programs are judged for the current user, {me}'
        in out
    )


def test_the_daemon_starts_with_a_program_check_refuses(tree: Tree) -> None:
    """Only check refuses it: a program installed later is found at run time."""
    command_config(tree, "nosuchprog")
    assert check(tree, "--user", judged_as())[0] == 2
    result = run_cli("run", "--exit-when-idle", "--config", str(tree.config))
    assert result.returncode == 0, result.stderr


def test_the_defaults_are_the_units() -> None:
    """check's default user is the unit's User=, and the unit leaves PATH to systemd."""
    unit = (REPO / "units" / "dropline.service").read_text()
    assert re.search(rf"^User={SERVICE_USER}$", unit, re.MULTILINE)
    assert not re.search(r"^Environment=.*\bPATH=", unit, re.MULTILINE)
    assert SERVICE_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- pipelines that can never receive a file ----------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [("*", "*.csv"), ("*.csv", "*.csv"), ("*.csv", "orders-*.csv")],
)
def test_a_pipeline_that_can_never_match_is_an_error(tree: Tree, first: str, second: str) -> None:
    """check exits 2 naming the line of the dead pipeline's match and who takes its files."""
    tree.write_config(
        f"- name: one\n  match: {json.dumps(first)}\n- name: two\n  match: {json.dumps(second)}\n"
    )
    text = tree.config.read_text().splitlines()
    line = max(i for i, text_line in enumerate(text) if "match:" in text_line) + 1
    code, out, err = check(tree)
    assert code == 2, out + err
    assert err.startswith(f"dropline: error: {tree.config}:{line}: pipelines[1].match: ")
    assert 'pipeline "two" can never receive a file' in err
    assert 'taken first by pipeline "one"' in err
    assert "is valid" not in out
    # The daemon itself runs it: the files go where they always went.
    result = run_cli("run", "--exit-when-idle", "--config", str(tree.config))
    assert result.returncode == 0, result.stderr


def test_pipelines_in_the_right_order_are_valid(tree: Tree) -> None:
    """The narrow pipeline first, then the wide one: both receive files."""
    tree.write_config("- name: orders\n  match: 'orders-*.csv'\n- name: rest\n  match: '*'\n")
    code, out, err = check(tree)
    assert code == 0, err
    assert "is valid (2 pipelines)" in out


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_configuration_one_may_not_read_is_a_permission_problem(tree: Tree) -> None:
    """Read by a user who may not: the read commands say "permission denied", exit 1
    (README: a permission problem); the daemon exits 2 (an unfit host: systemd does not
    restart it, which could not help)."""
    tree.write_config(GOOD)
    tree.config.chmod(0o600)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    for args, code in ((["status"], 1), (["run"], 2)):
        done = subprocess.run(
            [*nobody, "-m", "dropline", *args, "--config", str(tree.config)],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == code, done.stderr
        assert "permission denied" in done.stderr and str(tree.config) in done.stderr
        assert "Traceback" not in done.stderr
