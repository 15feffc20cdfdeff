"""Tests of the configuration loader, the host path checks and the unit parsers.

Every configuration is a real file in tmp_path; the bad ones are one table,
each row saying which line and key the error must name and what it must say.
"""

from __future__ import annotations

import dataclasses
import json
import random
import textwrap
import types
from pathlib import Path

import pytest

from dropline.config import (
    DEFAULT_IGNORE,
    PLACEHOLDERS,
    Config,
    PipelineConfig,
    StageConfig,
    check_paths,
    load_config,
)
from dropline.errors import ConfigError
from dropline.globs import compile_globs, overlaps, uncovered_name
from dropline.pipeline import unreachable_pipelines
from dropline.stages import StageContext
from dropline.stages.command import substitutions
from dropline.units import parse_duration, parse_size

GOOD = """\
# A configuration that uses every key.
data_dir: data
state_db: state/dropline.db
pipelines_dir: /srv/pipelines
ignore: ["*.tmp", ".*", "[!a-z]*"]
settle_time: 500ms
rescan_interval: 2m30s
archive_layout: flat
max_file_size: 10MiB
workers: 8
max_in_flight: 100
batch_size: 10
stop_timeout: 3
log_format: json
pipelines:
  - name: csv
    match: ["*.csv", "*.CSV"]
    stages:
      - name: checksum
        command: ["sha256sum", "{path}"]
        timeout: 30s
        retries: 0
        idempotent: false
      - name: validate
        python: "ingest.stages:validate"
        backoff: {initial: 2s, max: 1h}
      - name: load
        builtin: sqlite-load
        with: {database: /var/lib/dropline/loaded.db, table: rows, columns: [a, b]}
    concurrency: 2
    priority: 3
  - name: passthrough
    match: "*"
"""


def write(tmp_path: Path, text: str, name: str = "dropline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_loads_into_frozen_objects(tmp_path: Path) -> None:
    """Every key of a full configuration ends up converted in the right field."""
    path = write(tmp_path, GOOD)
    config = load_config(path)

    assert config.path == path
    assert config.data_dir == tmp_path / "data"
    assert config.state_db == tmp_path / "state" / "dropline.db"
    assert config.pipelines_dir == Path("/srv/pipelines")
    assert config.ignore == ("*.tmp", ".*", "[!a-z]*")
    assert config.settle_time == 0.5
    assert config.rescan_interval == 150.0
    assert config.archive_layout == "flat"
    assert config.max_file_size == 10 * 1024 * 1024
    assert (config.workers, config.max_in_flight, config.batch_size) == (8, 100, 10)
    assert config.stop_timeout == 3.0
    assert config.log_format == "json"
    assert config.incoming == tmp_path / "data" / "incoming"

    csv, passthrough = config.pipelines
    assert passthrough == PipelineConfig(
        name="passthrough",
        match=("*",),
        stages=(),
        line=32,
        match_line=33,
        duplicates_to_line=32,  # not written: the pipeline's own line
    )
    assert (passthrough.concurrency, passthrough.priority) == (None, 1)
    assert (csv.concurrency, csv.priority) == (2, 3)
    assert csv.name == "csv"
    assert csv.match == ("*.csv", "*.CSV")
    assert csv.line == 16
    checksum, validate, load = csv.stages
    assert checksum == StageConfig(
        name="checksum",
        kind="command",
        command=("sha256sum", "{path}"),
        timeout=30.0,
        retries=0,
        idempotent=False,
        line=19,
        command_line=20,
        options=checksum.options,
    )
    assert validate.kind == "python"
    assert validate.python == "ingest.stages:validate"
    assert (validate.backoff_initial, validate.backoff_max) == (2.0, 3600.0)
    assert validate.line == 24
    assert load.kind == "builtin"
    assert load.builtin == "sqlite-load"
    assert load.options == {
        "database": "/var/lib/dropline/loaded.db",
        "table": "rows",
        "columns": ["a", "b"],
    }
    assert config.lines["data_dir"] == 2
    assert config.lines["state_db"] == 3


def test_config_is_immutable(tmp_path: Path) -> None:
    """Neither the dataclasses nor a stage's options can be changed after loading."""
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 1  # type: ignore[misc]
    options = config.pipelines[0].stages[2].options
    assert isinstance(options, types.MappingProxyType)
    with pytest.raises(TypeError):
        options["table"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.pipelines[0].stages[0].options["x"] = 1  # type: ignore[index]


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    """Keys left out take the dataclass defaults; absolute paths stay as written."""
    path = write(
        tmp_path,
        "data_dir: /opt/automation/data\n"
        "state_db: /var/lib/dropline/state.db\n"
        "pipelines: [{name: passthrough, match: '*'}]\n",
    )
    config = load_config(path)
    expected = Config(
        path=path,
        data_dir=Path("/opt/automation/data"),
        state_db=Path("/var/lib/dropline/state.db"),
        pipelines=(
            PipelineConfig(
                name="passthrough", match=("*",), line=3, match_line=3, duplicates_to_line=3
            ),
        ),
    )
    assert config == expected
    assert config.ignore == DEFAULT_IGNORE


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data_dir is relative to the file, not to the working directory."""
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", GOOD)
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/dropline.yaml")
    assert config.path == tmp_path / "etc" / "dropline.yaml"
    assert config.data_dir == tmp_path / "etc" / "data"


def test_merge_keys_and_aliases(tmp_path: Path) -> None:
    """A stage can inherit from an anchored one with "<<"; its own keys win."""
    path = write(
        tmp_path,
        textwrap.dedent("""\
            data_dir: d
            state_db: s.db
            pipelines:
              - name: p
                match: "*"
                stages:
                  - &load
                    name: load-a
                    builtin: sqlite-load
                    timeout: 10s
                    with: {table: a}
                  - <<: *load
                    name: load-b
            """),
    )
    first, second = load_config(path).pipelines[0].stages
    assert second.name == "load-b"
    assert second.builtin == "sqlite-load"
    assert second.timeout == 10.0
    assert second.options == first.options
    assert second.line == 12


def case(id_: str, text: str, line: int, key: str, *needles: str) -> pytest.ParameterSet:
    """One row of BAD: the file text, the line and key the error names, and phrases it holds."""
    return pytest.param(text, line, key, needles, id=id_)


HEAD = "data_dir: d\nstate_db: s.db\n"  # lines 1-2 of many cases below

BAD = [
    case(
        "unknown-key-suggestion",
        "data_dri: d\nstate_db: s.db\npipelines: [{name: p, match: '*'}]\n",
        1,
        "data_dri",
        'unknown key "data_dri"; did you mean "data_dir"?',
        "allowed: data_dir, state_db, pipelines, ignore",
    ),
    case(
        "unknown-stage-key",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - {name: s, builtin: x, timout: 3s}\n",
        7,
        "pipelines[0].stages[0].timout",
        'did you mean "timeout"?',
        "allowed: name, command, python, builtin, with, timeout",
    ),
    case(
        "merge-not-a-mapping",
        HEAD + "pipelines:\n  - <<: 5\n    name: p\n    match: '*'\n",
        4,
        "pipelines[0]",
        '"<<" merges a mapping or a list of mappings',
    ),
    case(
        "unknown-key-no-suggestion",
        HEAD + "pipelines: [{name: p, match: '*', zzz: 1}]\n",
        3,
        "pipelines[0].zzz",
        'unknown key "zzz"; allowed: name, match, stages',
    ),
    case(
        "duplicate-key",
        HEAD + "workers: 2\nworkers: 3\npipelines: [{name: p, match: '*'}]\n",
        4,
        "workers",
        'duplicate key "workers" (first at line 3)',
    ),
    case(
        "workers-string",
        HEAD + "workers: four\npipelines: [{name: p, match: '*'}]\n",
        3,
        "workers",
        'expected an integer from 1 to 256, got a string "four"',
    ),
    case(
        "workers-bool",
        HEAD + "workers: yes\npipelines: [{name: p, match: '*'}]\n",
        3,
        "workers",
        "expected an integer from 1 to 256, got a boolean true",
    ),
    case(
        "workers-out-of-range",
        HEAD + "pipelines: [{name: p, match: '*'}]\nworkers: 0\n",
        4,
        "workers",
        "expected an integer from 1 to 256, got 0",
    ),
    case(
        "batch-size-float",
        HEAD + "pipelines: [{name: p, match: '*'}]\nbatch_size: 1.5\n",
        4,
        "batch_size",
        "expected an integer from 1 to 100000, got a number 1.5",
    ),
    case(
        "idempotent-not-bool",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        idempotent: 'yes'\n",
        9,
        "pipelines[0].stages[0].idempotent",
        'expected true or false, got a string "yes"',
    ),
    case(
        "glob-unclosed-bracket",
        HEAD + "pipelines:\n  - name: p\n    match: 'data[0-9.csv'\n",
        5,
        "pipelines[0].match",
        'bad glob "data[0-9.csv"',
        'no closing "]"',
        'such as "*.csv"',
    ),
    case(
        "glob-with-slash",
        HEAD + "ignore:\n  - '*.tmp'\n  - 'sub/*'\npipelines: [{name: p, match: '*'}]\n",
        5,
        "ignore[1]",
        'cannot contain "/"',
    ),
    case(
        "glob-empty",
        HEAD + "pipelines: [{name: p, match: ['*.csv', '']}]\n",
        3,
        "pipelines[0].match[1]",
        "an empty glob matches nothing",
    ),
    case(
        "match-empty-list",
        HEAD + "pipelines:\n  - name: p\n    match: []\n",
        5,
        "pipelines[0].match",
        "expected a glob or a non-empty list of globs, got an empty list",
    ),
    case(
        "glob-not-a-string",
        HEAD + "pipelines:\n  - name: p\n    match: 42\n",
        5,
        "pipelines[0].match",
        "got an integer 42",
    ),
    case(
        "duplicate-pipeline-name",
        HEAD + "pipelines:\n  - name: p\n    match: '*.a'\n  - name: p\n    match: '*.b'\n",
        6,
        "pipelines[1].name",
        'duplicate pipeline name "p"',
        "line 4",
        "line 6",
    ),
    case(
        "duplicate-stage-name",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - {name: s, builtin: a}\n      - {name: s, builtin: b}\n",
        8,
        "pipelines[0].stages[1].name",
        'duplicate stage name "s" in pipeline "p"',
        "line 7",
        "line 8",
    ),
    case(
        "bad-pipeline-name",
        HEAD + "pipelines:\n  - name: my pipeline\n    match: '*'\n",
        4,
        "pipelines[0].name",
        'got a string "my pipeline"',
        "letters, digits, '.', '_' and '-'",
    ),
    case(
        "pipeline-name-dotdot",
        HEAD + "pipelines:\n  - name: '..'\n    match: '*'\n",
        4,
        "pipelines[0].name",
        'got a string ".."',
        "not only dots",
    ),
    case(
        "stage-two-kinds",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        command: [true]\n        python: 'a:b'\n",
        9,
        "pipelines[0].stages[0].python",
        "exactly one of command, python or builtin",
        "command (line 8) and python (line 9)",
    ),
    case(
        "stage-no-kind",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        timeout: 3s\n",
        7,
        "pipelines[0].stages[0]",
        "exactly one of command, python or builtin; it has none",
    ),
    case(
        "stage-not-a-mapping",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages: [checksum]\n",
        6,
        "pipelines[0].stages[0]",
        "expected a stage mapping with a name and one of command, python or builtin",
        'got a string "checksum"',
    ),
    case(
        "command-as-string",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        command: sha256sum {path}\n",
        8,
        "pipelines[0].stages[0].command",
        "an argv list, never a shell string",
        '["sha256sum", "{path}"]',
    ),
    case(
        "command-unquoted-number",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        command: [head, -n, 10, '{path}']\n",
        8,
        "pipelines[0].stages[0].command[2]",
        "expected a string, got an integer 10; quote it",
    ),
    case(
        "unknown-placeholder",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        command:\n          - nosuchprog\n          - '{paht}'\n",
        10,
        "pipelines[0].stages[0].command[1]",
        'unknown placeholder "{paht}"; did you mean "{path}"?',
        "allowed: {path}, {name}, {item_id}, {pipeline}, {stage}",
        'take a space: "{ paht }"',
    ),
    case(
        "unknown-placeholder-inside-an-argument",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - {name: s, command: [cp, '{path}', '/srv/out/{Name}.{date}']}\n",
        7,
        "pipelines[0].stages[0].command[2]",
        'unknown placeholder "{Name}"; did you mean "{name}"?',
    ),
    case(
        "unknown-placeholder-in-on-failure",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    on_failure:\n"
        "      - {name: s, command: [logger, '{file}']}\n",
        7,
        "pipelines[0].on_failure[0].command[1]",
        'unknown placeholder "{file}";',
    ),
    case(
        "command-with-options",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        command: [wc]\n        with: {a: 1}\n",
        9,
        "pipelines[0].stages[0].with",
        '"with" is only allowed with builtin or python stages',
    ),
    case(
        "bad-python-reference",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        python: ingest.stages.validate\n",
        8,
        "pipelines[0].stages[0].python",
        '"module.path:function"',
        'got a string "ingest.stages.validate"',
    ),
    case(
        "python-reference-keyword",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        python: 'import:run'\n",
        8,
        "pipelines[0].stages[0].python",
        '"module.path:function"',
    ),
    case(
        "with-not-a-mapping",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        with: [1, 2]\n",
        9,
        "pipelines[0].stages[0].with",
        "expected a mapping of options, got a list",
    ),
    case(
        "bad-duration",
        HEAD + "settle_time: 30 seconds\npipelines: [{name: p, match: '*'}]\n",
        3,
        "settle_time",
        "cannot read '30 seconds' as a duration",
        '"500ms", "30s", "5m", "1h", "1d", "2m30s"',
    ),
    case(
        "zero-timeout",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        timeout: 0s\n",
        9,
        "pipelines[0].stages[0].timeout",
        "must be greater than 0",
    ),
    case(
        "negative-duration",
        HEAD + "stop_timeout: -1\npipelines: [{name: p, match: '*'}]\n",
        3,
        "stop_timeout",
        "duration -1 is negative",
    ),
    case(
        "backoff-unknown-key",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        backoff: {initial: 1s, maximum: 1m}\n",
        9,
        "pipelines[0].stages[0].backoff.maximum",
        'did you mean "max"?',
        "allowed: initial, max",
    ),
    case(
        "backoff-initial-above-max",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        backoff: {initial: 1h, max: 1m}\n",
        9,
        "pipelines[0].stages[0].backoff.initial",
        "initial (3600s) is longer than max (60s)",
    ),
    case(
        "bad-size",
        HEAD + "max_file_size: 10 parsecs\npipelines: [{name: p, match: '*'}]\n",
        3,
        "max_file_size",
        "unknown size unit in '10 parsecs'",
        '"10MiB", "4GiB"',
    ),
    case(
        "zero-size",
        HEAD + "max_file_size: 0\npipelines: [{name: p, match: '*'}]\n",
        3,
        "max_file_size",
        "the size must be greater than 0",
    ),
    case(
        "negative-retries",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
        "      - name: s\n        builtin: x\n        retries: -1\n",
        9,
        "pipelines[0].stages[0].retries",
        "expected an integer from 0 to 100, got -1",
    ),
    case(
        "bad-archive-layout",
        HEAD + "archive_layout: hourly\npipelines: [{name: p, match: '*'}]\n",
        3,
        "archive_layout",
        'expected one of "flat", "daily", got a string "hourly"',
    ),
    case(
        "bad-log-format",
        HEAD + "log_format: text\npipelines: [{name: p, match: '*'}]\n",
        3,
        "log_format",
        'expected one of "auto", "console", "json"',
    ),
    case(
        "missing-data-dir",
        "state_db: s.db\npipelines: [{name: p, match: '*'}]\n",
        1,
        "data_dir",
        'missing required key "data_dir"',
        "required here: data_dir, state_db, pipelines",
    ),
    case(
        "missing-match",
        HEAD + "pipelines:\n  - name: p\n",
        4,
        "pipelines[0].match",
        'missing required key "match"',
    ),
    case(
        "missing-stage-name",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n      - builtin: x\n",
        7,
        "pipelines[0].stages[0].name",
        'missing required key "name"',
    ),
    case(
        "empty-pipelines",
        HEAD + "pipelines: []\n",
        3,
        "pipelines",
        "expected a non-empty list of pipelines, got an empty list",
    ),
    case(
        "pipelines-null",
        HEAD + "pipelines:\n",
        3,
        "pipelines",
        "expected a non-empty list of pipelines, got an empty value (null)",
    ),
    case(
        "empty-path",
        "data_dir: ''\nstate_db: s.db\npipelines: [{name: p, match: '*'}]\n",
        1,
        "data_dir",
        "expected a path, absolute or relative to the configuration file's directory",
    ),
    case(
        "non-string-key",
        HEAD + "pipelines: [{name: p, match: '*'}]\n1: x\n",
        4,
        "",
        "keys must be strings, got an integer 1",
    ),
    case(
        "impossible-date",
        "data_dir: 2024-13-45\nstate_db: s.db\npipelines: [{name: p, match: '*'}]\n",
        1,
        "data_dir",
        "cannot read this value",
    ),
    case(
        "unknown-tag",
        "data_dir: !env DATA_DIR\nstate_db: s\npipelines: [{name: p, match: '*'}]\n",
        1,
        "data_dir",
        "cannot read this value",
        "!env",
    ),
    case(
        "invalid-yaml",
        HEAD + "pipelines:\n  - name: p\n   match: '*'\n",
        5,
        "",
        "invalid YAML",
        "line 5",
    ),
    case(
        "unclosed-flow",
        HEAD + "pipelines: [{name: p, match: '*'}\nworkers: 2\n",
        4,
        "",
        "invalid YAML",
        "(started at line 3)",
    ),
    case("empty-file", "", 1, "", "the file is empty", "data_dir, state_db, pipelines"),
    case("only-comments", "# nothing yet\n", 1, "", "the file is empty"),
    case(
        "top-level-list",
        "- data_dir: d\n",
        1,
        "",
        "expected the top level to be a mapping of keys (data_dir, state_db, pipelines",
        "got a list",
    ),
    case("top-level-scalar", "hello\n", 1, "", 'got a string "hello"'),
    case(
        "two-documents",
        HEAD + "pipelines: [{name: p, match: '*'}]\n---\nworkers: 2\n",
        4,
        "",
        "expected a single document",
    ),
    case(
        "concurrency-zero",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    concurrency: 0\n",
        6,
        "pipelines[0].concurrency",
        "expected an integer from 1 to 256, got 0",
    ),
    case(
        "concurrency-not-a-number",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    concurrency: all\n",
        6,
        "pipelines[0].concurrency",
        'expected an integer from 1 to 256, got a string "all"',
    ),
    case(
        "concurrency-above-workers",
        HEAD + "workers: 2\npipelines:\n  - name: a\n    match: '*.a'\n"
        "  - name: b\n    match: '*'\n    concurrency: 3\n",
        9,
        "pipelines[1].concurrency",
        "concurrency 3 is more than workers (2)",
        "expected an integer from 1 to 2",
    ),
    case(
        "priority-zero",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    priority: 0\n",
        6,
        "pipelines[0].priority",
        "expected an integer from 1 to 100, got 0",
    ),
    case(
        "priority-misspelt",
        HEAD + "pipelines:\n  - name: p\n    match: '*'\n    priorty: 2\n",
        6,
        "pipelines[0].priorty",
        'did you mean "priority"?',
        "concurrency, priority",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "needles"), BAD)
def test_bad_config_names_file_line_key_and_what_is_allowed(
    tmp_path: Path, text: str, line: int, key: str, needles: tuple[str, ...]
) -> None:
    """Each bad configuration raises ConfigError starting "file:line: key: "."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert message.startswith(prefix), message
    assert (raised.value.line, raised.value.key) == (line, key)
    for needle in needles:
        assert needle in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that does not exist is reported by name, without a traceback."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="no such file") as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    """Pointing at a directory is reported as such."""
    with pytest.raises(ConfigError, match="it is a directory"):
        load_config(tmp_path)


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their line."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"data_dir: d\nstate_db: caf\xe9.db\n")
    with pytest.raises(ConfigError, match="not UTF-8") as raised:
        load_config(path)
    assert raised.value.line == 2


def test_control_character_names_the_line(tmp_path: Path) -> None:
    """A control character YAML refuses is reported with its line."""
    path = tmp_path / "ctrl.yaml"
    path.write_bytes(b"data_dir: d\n\x01\n")
    with pytest.raises(ConfigError, match="invalid YAML") as raised:
        load_config(path)
    assert raised.value.line == 2


# ---------------------------------------------------------------------------
# check_paths


def config_for(tmp_path: Path, data_dir: Path, state_db: Path) -> Config:
    text = (
        "# host paths\n"
        f"data_dir: {data_dir}\n"
        f"state_db: {state_db}\n"
        "pipelines: [{name: p, match: '*'}]\n"
    )
    return load_config(write(tmp_path, text))


def test_check_paths_creates_the_spool_folders(tmp_path: Path) -> None:
    """A writable data_dir gets its four folders; a second check changes nothing."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "failed").mkdir()
    config = config_for(tmp_path, tmp_path / "data", tmp_path / "state.db")
    check_paths(config)
    check_paths(config)
    for folder in (config.incoming, config.working, config.archive, config.failed):
        assert folder.is_dir()


def test_check_paths_accepts_an_existing_database(tmp_path: Path) -> None:
    """An existing regular state_db file is fine."""
    (tmp_path / "data").mkdir()
    (tmp_path / "state.db").write_bytes(b"")
    check_paths(config_for(tmp_path, tmp_path / "data", tmp_path / "state.db"))


@pytest.mark.parametrize(
    ("setup", "data_dir", "state_db", "line", "key", "needle"),
    [
        pytest.param("", "data", "state.db", 2, "data_dir", "does not exist", id="no-data-dir"),
        pytest.param(
            "file:data", "data", "state.db", 2, "data_dir", "is not a directory", id="data-dir-file"
        ),
        pytest.param(
            "dir:data file:data/incoming",
            "data",
            "state.db",
            2,
            "data_dir",
            "incoming is not a directory",
            id="spool-folder-file",
        ),
        pytest.param(
            "dir:data dir:state.db",
            "data",
            "state.db",
            3,
            "state_db",
            "exists but is not a regular file",
            id="state-db-directory",
        ),
        pytest.param(
            "dir:data",
            "data",
            "missing/state.db",
            3,
            "state_db",
            "does not exist",
            id="state-parent-missing",
        ),
        pytest.param(
            "dir:data file:blocker",
            "data",
            "blocker/state.db",
            3,
            "state_db",
            "is not a directory",
            id="state-parent-file",
        ),
    ],
)
def test_check_paths_errors_name_the_key_and_path(
    tmp_path: Path, setup: str, data_dir: str, state_db: str, line: int, key: str, needle: str
) -> None:
    """Each unusable path is a ConfigError at the line of data_dir or state_db."""
    for item in setup.split():
        kind, _, name = item.partition(":")
        if kind == "dir":
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("not a directory")
    config = config_for(tmp_path, tmp_path / data_dir, tmp_path / state_db)
    with pytest.raises(ConfigError) as raised:
        check_paths(config)
    message = str(raised.value)
    assert message.startswith(f"{config.path}:{line}: {key}: "), message
    assert needle in message
    assert str(tmp_path) in raised.value.detail


# ---------------------------------------------------------------------------
# units


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("0.25", 0.25),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("2m30s", 150.0),
        ("1h0m5s", 3605.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Numbers are seconds; strings carry units from largest to smallest."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (-1, "negative"),
        ("-5s", "negative"),
        ("", "empty"),
        ("5 minutes", "cannot read"),
        ("5x", "cannot read"),
        ("30s2m", "largest to smallest"),
        ("1m1m", "largest to smallest"),
        (True, "not a duration"),
        (None, "not a duration"),
        (float("inf"), "not a finite number"),
        (10**400, "too large"),
    ],
)
def test_parse_duration_rejects(value: object, needle: str) -> None:
    """Anything else is a ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=needle):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (4096, 4096),
        (1024.0, 1024),
        ("100", 100),
        ("100B", 100),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("512KiB", 512 * 1024),
        ("10MiB", 10 * 1024**2),
        ("4GiB", 4 * 1024**3),
        ("1.5GiB", 3 * 512 * 1024**2),
        ("2 mib", 2 * 1024**2),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    """Decimal units are powers of 1000, binary ones powers of 1024."""
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (-1, "negative"),
        ("-1MiB", "cannot read"),
        ("10 parsecs", "unknown size unit"),
        ("MiB", "cannot read"),
        ("1.5B", "whole number"),
        (1.5, "whole number"),
        (False, "not a size"),
        ([1], "not a size"),
    ],
)
def test_parse_size_rejects(value: object, needle: str) -> None:
    """Anything else is a ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=needle):
        parse_size(value)


# ---------------------------------------------------------------------------
# metrics

PIPES = "pipelines: [{name: p, match: '*'}]\n"  # line 3 after HEAD


def metrics_config(tmp_path: Path, body: str) -> Config:
    return load_config(write(tmp_path, HEAD + PIPES + "metrics:\n" + textwrap.indent(body, "  ")))


@pytest.mark.parametrize(
    ("body", "listen", "textfile", "interval"),
    [
        pytest.param("listen: 127.0.0.1:9464\n", ("127.0.0.1", 9464), None, 15.0, id="v4"),
        pytest.param("listen: localhost:1\n", ("localhost", 1), None, 15.0, id="localhost"),
        pytest.param('listen: "[::1]:65535"\n', ("::1", 65535), None, 15.0, id="v6"),
        pytest.param("listen: 0.0.0.0:9464\n", ("0.0.0.0", 9464), None, 15.0, id="any"),
        pytest.param(
            "textfile: /var/lib/node_exporter/dropline.prom\ninterval: 1m\n",
            None,
            Path("/var/lib/node_exporter/dropline.prom"),
            60.0,
            id="textfile",
        ),
        pytest.param(
            "listen: '[2001:db8::5]:80'\ntextfile: /t/d.prom\n",
            ("2001:db8::5", 80),
            Path("/t/d.prom"),
            15.0,
            id="both",
        ),
    ],
)
def test_metrics_config(
    tmp_path: Path,
    body: str,
    listen: tuple[str, int] | None,
    textfile: Path | None,
    interval: float,
) -> None:
    """metrics: listen as host:port (IPv6 in brackets), textfile, interval defaulting to 15s."""
    metrics = metrics_config(tmp_path, body).metrics
    assert metrics is not None
    assert (metrics.listen, metrics.textfile, metrics.interval) == (listen, textfile, interval)
    assert metrics.lines["listen" if listen else "textfile"] == 5


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    """Without a metrics key, Config.metrics is None: nothing listens, nothing is written."""
    assert load_config(write(tmp_path, HEAD + PIPES)).metrics is None


def test_metrics_address_is_written_back_as_given(tmp_path: Path) -> None:
    """The address in messages keeps the brackets of an IPv6 host."""
    metrics = metrics_config(tmp_path, "listen: '[::1]:9464'\n").metrics
    assert metrics is not None and metrics.address == "[::1]:9464"


M = HEAD + PIPES + "metrics:\n"  # the keys under metrics start at line 5

BAD_METRICS = [
    case("empty", HEAD + PIPES + "metrics:\n", 4, "metrics", "expected a mapping"),
    case("neither", M + "  interval: 5s\n", 5, "metrics", "needs listen", "or both"),
    case("unknown", M + "  listen: 127.0.0.1:1\n  port: 2\n", 6, "metrics.port", "allowed:"),
    case(
        "interval-without-textfile",
        M + "  listen: 127.0.0.1:1\n  interval: 5s\n",
        6,
        "metrics.interval",
        "applies to textfile only",
    ),
    case("port-only", M + "  listen: 9464\n", 5, "metrics.listen", "got an integer 9464"),
    case("no-port", M + "  listen: 127.0.0.1\n", 5, "metrics.listen", '"host:port"'),
    case("no-host", M + "  listen: ':9464'\n", 5, "metrics.listen", '"host:port"'),
    case("port-0", M + "  listen: 127.0.0.1:0\n", 5, "metrics.listen", "1 to 65535"),
    case("port-big", M + "  listen: 127.0.0.1:65536\n", 5, "metrics.listen", "1 to 65535"),
    case("port-word", M + "  listen: 127.0.0.1:http\n", 5, "metrics.listen", "1 to 65535"),
    case(
        "host-name",
        M + "  listen: prometheus.example:9464\n",
        5,
        "metrics.listen",
        "an IP address or localhost",
    ),
    case("bad-ip", M + "  listen: 127.0.0.300:9464\n", 5, "metrics.listen", "an IP address"),
    case("v6-bare", M + "  listen: '::1:9464'\n", 5, "metrics.listen", "needs brackets"),
    case("v4-in-brackets", M + "  listen: '[127.0.0.1]:9464'\n", 5, "metrics.listen", "IP"),
    case("list", M + '  listen: ["::1", 9464]\n', 5, "metrics.listen", "got a list", "quote"),
    case("relative", M + "  textfile: dropline.prom\n", 5, "metrics.textfile", "absolute"),
    case("not-prom", M + "  textfile: /tmp/dropline.txt\n", 5, "metrics.textfile", ".prom"),
    case("hidden", M + "  textfile: /tmp/.prom\n", 5, "metrics.textfile", "hidden"),
    case(
        "interval-zero",
        M + "  textfile: /tmp/d.prom\n  interval: 0s\n",
        6,
        "metrics.interval",
        "greater than 0",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "needles"), BAD_METRICS)
def test_bad_metrics_config_names_file_line_key_and_what_is_allowed(
    tmp_path: Path, text: str, line: int, key: str, needles: tuple[str, ...]
) -> None:
    """Each bad metrics value raises ConfigError starting "file:line: key: "."""
    test_bad_config_names_file_line_key_and_what_is_allowed(tmp_path, text, line, key, needles)


@pytest.mark.parametrize(
    ("setup", "textfile", "needle"),
    [
        pytest.param("", "missing/d.prom", "does not exist", id="dir-missing"),
        pytest.param("file:blocker", "blocker/d.prom", "is not a directory", id="dir-file"),
        pytest.param("dir:out dir:out/d.prom", "out/d.prom", "not a regular file", id="is-dir"),
    ],
)
def test_check_paths_checks_the_textfile_directory(
    tmp_path: Path, setup: str, textfile: str, needle: str
) -> None:
    """The textfile's directory must exist and be writable; the file, if there, a file."""
    for item in setup.split():
        kind, _, name = item.partition(":")
        if kind == "dir":
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("not a directory")
    (tmp_path / "data").mkdir()
    text = (
        f"data_dir: {tmp_path / 'data'}\nstate_db: {tmp_path / 'state.db'}\n{PIPES}"
        f"metrics:\n  textfile: {tmp_path / textfile}\n"
    )
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as raised:
        check_paths(config)
    message = str(raised.value)
    assert message.startswith(f"{config.path}:5: metrics.textfile: "), message
    assert needle in message


def test_check_paths_accepts_a_writable_textfile_directory(tmp_path: Path) -> None:
    """A writable directory, the file not there yet: all is well."""
    (tmp_path / "data").mkdir()
    text = (
        f"data_dir: {tmp_path / 'data'}\nstate_db: {tmp_path / 'state.db'}\n{PIPES}"
        f"metrics:\n  textfile: {tmp_path / 'd.prom'}\n"
    )
    check_paths(load_config(write(tmp_path, text)))


# --- command placeholders -----------------------------------------------------------


def test_placeholders_are_those_a_command_stage_substitutes(tmp_path: Path) -> None:
    """The loader's list of placeholders is exactly what the command stage replaces."""
    ctx = StageContext(
        item_id="01J", path=tmp_path / "f", name="f", pipeline="p", stage="s", attempt=1
    )
    assert set(substitutions(ctx)) == set(PLACEHOLDERS)


@pytest.mark.parametrize(
    "arg",
    [
        "{path}",
        "--out={name}.{item_id}.{pipeline}.{stage}",
        "echo ${HOME} $1",  # the shell's own braces
        "%{http_code}",  # curl's
        "{ print $1 }",  # awk's, with a space
        "{}",  # find's and xargs'
        '{"a": 1}',  # JSON
        "{a,b}",  # brace expansion
    ],
)
def test_braces_that_are_not_placeholders_load(tmp_path: Path, arg: str) -> None:
    """Only "{word}" reads as a placeholder; the braces of other languages pass as written."""
    body = HEAD + "pipelines:\n  - name: p\n    match: '*'\n    stages:\n"
    body += f"      - name: s\n        command: [prog, {json.dumps(arg)}]\n"
    config = load_config(write(tmp_path, body))
    assert config.pipelines[0].stages[0].command == ("prog", arg)
    assert config.pipelines[0].stages[0].command_line == 8


# --- pipelines that can never receive a file ----------------------------------------


def pipelines_config(
    tmp_path: Path, matches: list[object], ignore: list[str] | None = None
) -> Config:
    lines = [HEAD.rstrip("\n")]
    if ignore is not None:
        lines.append(f"ignore: {json.dumps(ignore)}")
    lines.append("pipelines:")
    for i, match in enumerate(matches):
        lines += [f"  - name: p{i}", f"    match: {json.dumps(match)}"]
    return load_config(write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize(
    ("matches", "ignore", "dead"),
    [
        (["*", "*.csv"], None, [1]),
        (["*", "*"], None, [1]),
        (["*.csv", "*.csv"], None, [1]),
        (["*.csv", "orders-*.csv"], None, [1]),  # every orders-*.csv ends in .csv
        (["orders-*.csv", "*.csv"], None, []),  # the other way round: reachable
        (["*.csv", ["*.csv", "*.json"]], None, []),  # its *.json still arrives
        (["?*", "*"], None, [1]),  # names are never empty
        (["a*", "b*", "[ab]*"], None, [2]),  # taken by two pipelines together
        (["a*", "b*", "[abc]*"], None, []),
        (["report-[0-9]*", "report-[!0-9]*", "report-?*"], None, [2]),
        (["report-[0-9]*", "report-[!0-9]*", "report-*"], None, []),  # "report-" itself
        (["*.CSV", "*.csv"], None, []),  # case matters to routing
        (["**", "x"], None, [1]),
        (["*.tmp"], None, [0]),  # the default ignore has *.tmp: never claimed
        (["*.tmp"], [], []),
        ([".*", "*.csv"], [], []),
    ],
)
def test_unreachable_pipelines_are_found_exactly(
    tmp_path: Path, matches: list[object], ignore: list[str] | None, dead: list[int]
) -> None:
    """Reported when, and only when, every name a pipeline matches goes elsewhere first."""
    config = pipelines_config(tmp_path, matches, ignore)
    errors = unreachable_pipelines(config)
    assert [e.key for e in errors] == [f"pipelines[{i}].match" for i in dead]
    for error, i in zip(errors, dead, strict=True):
        assert error.line == 5 + (1 if ignore is not None else 0) + 2 * i
        assert str(error).startswith(f"{config.path}:{error.line}: pipelines[{i}].match: ")
        assert f'pipeline "p{i}" can never receive a file' in error.detail


def test_unreachable_pipeline_names_who_takes_its_files(tmp_path: Path) -> None:
    """The message names the pipelines that take the names first, in routing order."""
    config = pipelines_config(tmp_path, ["*.csv", "*", "orders-*.csv", "*.tmp"])
    first, second = unreachable_pipelines(config)
    assert 'taken first by pipeline "p0" (line 4, match "*.csv");' in first.detail
    assert 'put it before "p0"' in first.detail
    assert 'is ignored (ignore: [".*", "*.tmp", "*.part", "*.partial", "*~"])' in second.detail


GLOB_PARTS = ["*", "?", "a", "b", ".", "[ab]", "[!a]", "[a-c]", "x", "[]]", "[!]a]"]
NAMES_ALPHABET = "abcx.]z"  # every letter the globs name, and one none does


def _names(max_len: int) -> list[str]:
    names = [""]
    out: list[str] = []
    for _ in range(max_len):
        names = [n + c for n in names for c in NAMES_ALPHABET]
        out += names
    return out


def test_witness_agrees_with_routing_on_random_globs() -> None:
    """Over many random globs, the answers hold against the compiled routing patterns.

    A name given as witness must really match the glob and none of the others; when
    there is none, no name of up to 4 letters may contradict it.
    """
    rng = random.Random(15)
    names = _names(4)
    for _ in range(400):
        glob = "".join(rng.choice(GLOB_PARTS) for _ in range(rng.randint(1, 4)))
        others = [
            "".join(rng.choice(GLOB_PARTS) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 3))
        ]
        mine, theirs = compile_globs((glob,)), compile_globs(tuple(others))
        found = uncovered_name(glob, others)
        if found is not None:
            assert found and mine.match(found) and not theirs.match(found), (glob, others, found)
        else:
            bad = [n for n in names if mine.match(n) and not theirs.match(n)]
            assert not bad, (glob, others, bad[:3])
        both = [n for n in names if mine.match(n) and theirs.match(n)]
        if both:
            assert overlaps(glob, others), (glob, others, both[:3])
