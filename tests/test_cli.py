"""The command line: bad configurations exit 2 with one clear message and no traceback."""

from __future__ import annotations

import os

import pytest

from .harness import Tree, run_cli

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
