"""builtin: publish, on real folders: the same filesystem and a tmpfs of its own.

Each test builds the stage as the configuration does (``build_builtin``) and
calls it with a StageContext made here, as a worker thread would.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dropline.errors import ConfigError, PermanentError
from dropline.ids import new_item_id
from dropline.stages import DATA_PATH, StageContext, StageFunc, publish
from dropline.stages.builtin import build_builtin
from dropline.stages.publish import TEMP_PREFIX, claim_day, temp_name

KEY = "pipelines[0].stages[2]"
Mounter = Callable[[Path], None]


def build(options: dict[str, Any], lines: dict[str, int] | None = None) -> StageFunc:
    return build_builtin(
        "publish", options, file="/etc/dropline/dropline.yaml", line=30, key=KEY, lines=lines
    ).func


def context(
    path: Path,
    *,
    name: str | None = None,
    item_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    cancel: threading.Event | None = None,
) -> StageContext:
    return StageContext(
        item_id=item_id or new_item_id(),
        path=path,
        name=name if name is not None else path.name,
        pipeline="reports",
        stage="publish",
        attempt=1,
        metadata=metadata or {},
        timeout=10.0,
        cancel=cancel,
    )


def dropped(tmp_path: Path, name: str = "report.csv", data: bytes = b"id,amount\n1,2\n") -> Path:
    working = tmp_path / "working"
    working.mkdir(exist_ok=True)
    path = working / name
    path.write_bytes(data)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def mount_tmpfs() -> Iterator[Mounter]:
    """mount_tmpfs(path): a small tmpfs on PATH, unmounted at teardown (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "dropline-test", str(path)],
            check=True,
        )
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- copying ------------------------------------------------------------------------


def test_publishes_a_durable_copy_on_the_same_filesystem(tmp_path: Path, out: Path) -> None:
    source = dropped(tmp_path)
    result = build({"to": str(out)})(context(source))
    assert result == {"published": str(out / "report.csv")}
    assert (out / "report.csv").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((out / "report.csv").stat().st_mode) == 0o640
    assert source.exists()  # only read
    assert listing(out) == ["report.csv"]  # no temporary left


def test_publishes_onto_another_filesystem(
    tmp_path: Path, mount_tmpfs: Mounter, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt)
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = dropped(tmp_path, "big.bin", data)
    assert os.stat(mnt).st_dev != source.stat().st_dev
    stage = build({"to": str(mnt), "if_exists": "replace"})
    ctx = context(source)
    assert stage(ctx) == {"published": str(mnt / "big.bin")}
    assert (mnt / "big.bin").read_bytes() == data
    assert listing(mnt) == ["big.bin"]
    # A second file of that name replaces it, atomically, on that filesystem too.
    other = dropped(tmp_path_factory.mktemp("other"), "big.bin", b"smaller")
    stage(context(other))
    assert (mnt / "big.bin").read_bytes() == b"smaller"
    assert listing(mnt) == ["big.bin"]


def test_an_empty_file_is_published(tmp_path: Path, out: Path) -> None:
    source = dropped(tmp_path, "empty.txt", b"")
    build({"to": str(out)})(context(source))
    assert (out / "empty.txt").read_bytes() == b""


def test_publishes_the_transformed_file_when_there_is_one(tmp_path: Path, out: Path) -> None:
    source = dropped(tmp_path, "report.csv", b"messy")
    derived = tmp_path / "scratch" / "transformed.csv"
    derived.parent.mkdir()
    derived.write_bytes(b"clean\n")
    build({"to": str(out)})(context(source, metadata={DATA_PATH: str(derived)}))
    assert (out / "report.csv").read_bytes() == b"clean\n"


# --- names ----------------------------------------------------------------------------


def test_name_templates(tmp_path: Path, out: Path) -> None:
    claimed = time.mktime((2024, 3, 9, 12, 0, 0, 0, 0, -1))
    item_id = new_item_id(claimed)
    assert claim_day(item_id) == "2024-03-09"
    source = dropped(tmp_path, "report.csv", b"x")
    cases = {
        "{stem}-{date}{ext}": "report-2024-03-09.csv",
        "{pipeline}.{item_id}{ext}": f"reports.{item_id}.csv",
        "ready-{name}": "ready-report.csv",
        "{{{stem}}}": "{report}",
    }
    for template, expected in cases.items():
        result = build({"to": str(out), "name": template})(context(source, item_id=item_id))
        assert result == {"published": str(out / expected)}, template
        assert (out / expected).read_bytes() == b"x"


def test_a_name_without_extension_and_an_undecodable_name(tmp_path: Path, out: Path) -> None:
    stage = build({"to": str(out), "name": "{stem}.done{ext}"})
    stage(context(dropped(tmp_path, "README", b"a")))
    raw = os.fsdecode(b"caf\xe9.csv")  # latin-1 bytes: not UTF-8
    stage(context(dropped(tmp_path, raw, b"b")))
    assert sorted(os.listdir(os.fsencode(out))) == [b"README.done", b"caf\xe9.done.csv"]


def test_a_name_in_an_error_is_quoted_and_escaped_never_a_python_repr(
    tmp_path: Path, out: Path
) -> None:
    """A name a template made that is no file name: said as "..." (escaped), not b'...'."""
    raw = os.fsdecode(TEMP_PREFIX + b"caf\xe9")  # not UTF-8
    stage = build({"to": str(out), "name": "{name}"})
    with pytest.raises(PermanentError) as caught:
        stage(context(dropped(tmp_path, raw, b"a")))
    text = str(caught.value)
    assert f'"{TEMP_PREFIX.decode()}caf\\xe9" would look like a temporary' in text, text
    assert "b'" not in text and 'b"' not in text


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{size}-{name}", 'unknown placeholder "{size}"'),
        ("{}", 'unknown placeholder "{}"'),
        ("sub/{name}", 'no "/"'),
        ("{name!r}", "takes no format"),
        ("{date:%Y}", "takes no format"),
        ("{name", "cannot read the template"),
        ("..", "usable file name"),
    ],
)
def test_bad_templates_are_refused_at_start_up(out: Path, template: str, needle: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build({"to": str(out), "name": template}, lines={"to": 31, "name": 32})
    assert needle in raised.value.detail
    assert raised.value.key == f"{KEY}.with.name"
    assert raised.value.line == 32
    assert str(raised.value).startswith(f"/etc/dropline/dropline.yaml:32: {KEY}.with.name: ")


# --- the target folder ----------------------------------------------------------------


def test_a_symlinked_folder_is_refused_at_start_up(tmp_path: Path, out: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(ConfigError, match="symbolic link") as raised:
        build({"to": str(link)}, lines={"to": 31})
    assert raised.value.key == f"{KEY}.with.to"
    assert raised.value.line == 31


@pytest.mark.parametrize(
    ("to", "needle"),
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("relative/path", "relative path"),
        (None, 'missing required key "to"'),
    ],
)
def test_bad_folders_are_refused_at_start_up(tmp_path: Path, to: str | None, needle: str) -> None:
    (tmp_path / "file").write_text("x")
    options = {} if to is None else {"to": to if "/" in to else str(tmp_path / to)}
    with pytest.raises(ConfigError) as raised:
        build(options)
    assert needle in raised.value.detail
    assert raised.value.key == f"{KEY}.with.to"


def test_unknown_options_and_modes_are_refused(out: Path) -> None:
    with pytest.raises(ConfigError, match='did you mean "if_exists"'):
        build({"to": str(out), "if_exist": "replace"})
    with pytest.raises(ConfigError, match='"keep-both", "replace", "fail"') as raised:
        build({"to": str(out), "if_exists": "overwrite"})
    assert raised.value.key == f"{KEY}.with.if_exists"


def test_a_folder_replaced_by_a_symlink_later_is_not_followed(tmp_path: Path, out: Path) -> None:
    stage = build({"to": str(out)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.rmdir()
    out.symlink_to(elsewhere)
    with pytest.raises(OSError, match="publish folder"):
        stage(context(dropped(tmp_path)))
    assert listing(elsewhere) == []


# --- if_exists -------------------------------------------------------------------------


def test_keep_both_never_overwrites(tmp_path: Path, out: Path) -> None:
    (out / "report.csv").write_bytes(b"someone else's")
    source = dropped(tmp_path, data=b"ours")
    ctx = context(source)
    result = build({"to": str(out)})(ctx)
    mine = f"report.{ctx.item_id}.csv"
    assert result == {"published": str(out / mine)}
    assert (out / "report.csv").read_bytes() == b"someone else's"
    assert (out / mine).read_bytes() == b"ours"
    # And a second taken name: ITEMID-1.
    (out / mine).write_bytes(b"changed by a reader")
    build({"to": str(out)})(ctx)
    assert (out / f"report.{ctx.item_id}-1.csv").read_bytes() == b"ours"


def test_replace_swaps_the_file_atomically(tmp_path: Path, out: Path) -> None:
    (out / "report.csv").write_bytes(b"yesterday's")
    before = (out / "report.csv").stat().st_ino
    build({"to": str(out), "if_exists": "replace"})(context(dropped(tmp_path, data=b"today's")))
    assert (out / "report.csv").read_bytes() == b"today's"
    assert (out / "report.csv").stat().st_ino != before  # renamed over, not rewritten
    assert listing(out) == ["report.csv"]


def test_fail_refuses_a_taken_name(tmp_path: Path, out: Path) -> None:
    (out / "report.csv").write_bytes(b"someone else's")
    with pytest.raises(PermanentError, match="already exists"):
        build({"to": str(out), "if_exists": "fail"})(context(dropped(tmp_path, data=b"ours")))
    assert (out / "report.csv").read_bytes() == b"someone else's"
    assert listing(out) == ["report.csv"]


def test_a_symlink_at_the_name_is_never_followed(tmp_path: Path, out: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "report.csv").symlink_to(victim)
    ctx = context(dropped(tmp_path, data=b"ours"))
    build({"to": str(out)})(ctx)
    assert victim.read_bytes() == b"precious"
    assert (out / f"report.{ctx.item_id}.csv").read_bytes() == b"ours"
    build({"to": str(out), "if_exists": "replace"})(ctx)
    assert victim.read_bytes() == b"precious"
    assert not (out / "report.csv").is_symlink()


# --- idempotency and crashes -------------------------------------------------------------


@pytest.mark.parametrize("if_exists", ["keep-both", "replace", "fail"])
def test_a_rerun_finds_its_copy_and_copies_nothing(
    tmp_path: Path, out: Path, if_exists: str
) -> None:
    stage = build({"to": str(out), "if_exists": if_exists})
    ctx = context(dropped(tmp_path))
    first = stage(ctx)
    inode = (out / "report.csv").stat().st_ino
    second = stage(ctx)  # as after a crash between the copy and the record of it
    assert second == first == {"published": str(out / "report.csv")}
    assert (out / "report.csv").stat().st_ino == inode
    assert listing(out) == ["report.csv"]


def test_a_leftover_temporary_is_removed_and_the_retry_succeeds(tmp_path: Path, out: Path) -> None:
    ctx = context(dropped(tmp_path, data=b"the real content"))
    # A crash half-way through the copy left this (O_EXCL would refuse to reuse it).
    leftover = out / os.fsdecode(temp_name(ctx))
    leftover.write_bytes(b"the real")
    assert leftover.name.startswith(TEMP_PREFIX.decode())
    assert ctx.item_id in leftover.name
    unrelated = out / f"{TEMP_PREFIX.decode()}{new_item_id()}.00000000.tmp"
    unrelated.write_bytes(b"another item's, still being written")
    result = build({"to": str(out)})(ctx)
    assert result == {"published": str(out / "report.csv")}
    assert (out / "report.csv").read_bytes() == b"the real content"
    assert not leftover.exists()
    assert unrelated.exists()  # not this item's: left alone


def test_cancel_stops_the_copy_and_leaves_nothing(tmp_path: Path, out: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedError, match="cancelled"):
        build({"to": str(out)})(context(dropped(tmp_path), cancel=cancel))
    assert listing(out) == []


def test_an_attempt_still_copying_is_not_disturbed(tmp_path: Path, out: Path) -> None:
    """A retry while an abandoned attempt of the same file still copies: refused, tried later."""
    ctx = context(dropped(tmp_path))
    stage = build({"to": str(out)})
    # What the abandoned attempt holds while it copies (its temporary's name).
    with publish._exclusive((str(out), temp_name(ctx))):
        with pytest.raises(RuntimeError, match="still copying"):
            stage(ctx)
        assert listing(out) == []
    assert stage(ctx) == {"published": str(out / "report.csv")}


def test_a_fifo_at_the_name_is_never_opened(tmp_path: Path, out: Path) -> None:
    os.mkfifo(out / "report.csv")
    ctx = context(dropped(tmp_path, data=b"ours"))
    started = time.monotonic()
    assert build({"to": str(out)})(ctx) == {"published": str(out / f"report.{ctx.item_id}.csv")}
    assert time.monotonic() - started < 1
    assert stat.S_ISFIFO((out / "report.csv").lstat().st_mode)
