"""Sub-folders a dropper makes in incoming/: what the default ACL lets automation do with them.

incoming/ is automation's, 3770, group droppers.  A folder a dropper makes in
it is the dropper's: without more, under umask 022 or 027 it is 2755 or 2750,
and automation (a member of droppers) can read the files but neither rename
them out nor remove the emptied folder.  units/dropline.tmpfiles gives
incoming/ a default ACL, inherited by all that is made inside, with an entry
of automation's own.  What a writer asks for still counts: the group bits of
the mode it creates or chmods a folder with become the ACL's mask, which
bounds automation's entry.  So each writer is measured here as the dropper
does it, under umask 022, 027 and 077, and the table is asserted whole: the
README's table is this one.  The service is stopped while measuring: what is
measured is the filesystem, not the daemon.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import struct
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..harness import wait_until
from .conftest import INSIDE, SERVICE_CONFIG
from .container import CONFIG, DATA, DROPPER, MEASURED, UNIT, Container

INCOMING = f"{DATA}/incoming"
WORKING = f"{DATA}/working"
TMPFILES = "/etc/tmpfiles.d/dropline.conf"
STAGING = f"/home/{DROPPER}/folders"  # the dropper's own files, outside incoming/
UMASKS = ("022", "027", "077")

# --- POSIX ACLs as the kernel stores them (no getfacl needed) -----------------
# system.posix_acl_*: a version word (2), then (tag u16, perm u16, id u32) each.
ACL_DEFAULT = "system.posix_acl_default"
ACL_ACCESS = "system.posix_acl_access"
TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
NAMED = (0x02, 0x08)


def read_acl(path: Path, kind: str = ACL_DEFAULT) -> list[str]:
    """PATH's ACL of KIND as getfacl would print it (``user:995:rwx``), [] if none."""
    try:
        raw = os.getxattr(path, kind)
    except OSError as exc:
        if exc.errno == errno.ENODATA:  # no such ACL
            return []
        raise
    (version,) = struct.unpack_from("<I", raw)
    assert version == 2, raw
    entries = []
    for offset in range(4, len(raw), 8):
        tag, perm, uid = struct.unpack_from("<HHI", raw, offset)
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        entries.append(f"{TAGS[tag]}:{uid if tag in NAMED else ''}:{bits}")
    return entries


NO_ID = 0xFFFFFFFF  # the id field of the entries that name no one


def write_acl(path: Path, entries: list[tuple[int, int, int]], kind: str = ACL_DEFAULT) -> None:
    """Set PATH's ACL of KIND from (tag, perm, id) triples, as setfacl would."""
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, kind, raw)


def expected_default_acl(automation_uid: str) -> list[str]:
    return ["user::rwx", f"user:{automation_uid}:rwx", "group::---", "mask::rwx", "other::---"]


# --- writers ----------------------------------------------------------------------
# Each makes the folder $n in incoming/ ($in) holding a.csv and deep/b.csv, as a
# dropper would; mk makes such a tree in the dropper's own folder ($st) first,
# under the dropper's umask, as their files would be.
PRELUDE = """
umask "$1"; st=$2; in=$3
mkdir -p "$st"
mk() {
  mkdir -p "$st/$1/deep"; printf 'a\\n' > "$st/$1/a.csv"; printf 'b\\n' > "$st/$1/deep/b.csv"
}
"""
# name: (what the README calls it, shell, the programs it needs)
WRITERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mkdir-cp": (
        "mkdir -p, then cp of each file",
        'mk "$n"; mkdir -p "$in/$n/deep"; cp "$st/$n/a.csv" "$in/$n/"; '
        'cp "$st/$n/deep/b.csv" "$in/$n/deep/"',
        (),
    ),
    "mkdir-redirect": (
        "mkdir -p, then > (a program writing new files)",
        'mkdir -p "$in/$n/deep"; printf "a\\n" > "$in/$n/a.csv"; '
        'printf "b\\n" > "$in/$n/deep/b.csv"',
        (),
    ),
    "cp-r": ("cp -r", 'mk "$n"; cp -r "$st/$n" "$in/"', ()),
    "tar-x": (
        "tar -x",
        'mk "$n"; tar -C "$st" -cf "$st/$n.tar" "$n"; tar -C "$in" -xf "$st/$n.tar"',
        ("tar",),
    ),
    "unzip": (
        "unzip",
        'mk "$n"; (cd "$st" && zip -qr "$n.zip" "$n"); unzip -q "$st/$n.zip" -d "$in"',
        ("zip", "unzip"),
    ),
    "rsync-r": ("rsync -r", 'mk "$n"; rsync -r "$st/$n" "$in/"', ("rsync",)),
    "mv": ("mv of a folder made outside incoming/", 'mk "$n"; mv "$st/$n" "$in/"', ()),
    "tar-x-0775": (
        "tar -x, folders stored 0775 (made under umask 002)",
        '(umask 002; mk "$n"); tar -C "$st" -cf "$st/$n.tar" "$n"; tar -C "$in" -xf "$st/$n.tar"',
        ("tar",),
    ),
    "tar-x-chmod": (
        "tar -x under a hidden name, chmod -R g+rwX, mv to the name",
        'mk "$n"; tar -C "$st" -cf "$st/$n.tar" "$n"; '
        'tar -C "$in" -xf "$st/$n.tar" --transform "s,^$n,.$n,"; '
        'chmod -R g+rwX "$in/.$n"; mv "$in/.$n" "$in/$n"',
        ("tar",),
    ),
    "rsync-r-chmod": (
        "rsync -r --chmod=Dg+rwx,Fg+r",
        'mk "$n"; rsync -r --chmod=Dg+rwx,Fg+r "$st/$n" "$in/"',
        ("rsync",),
    ),
}

# What automation can do with the folder: (read both files, rename both out
# into working/, rmdir deep/ and the folder).
ALL = (True, True, True)
READ = (True, False, False)
TAKE = (False, True, True)  # the folders are automation's to empty, the files not to read
NONE = (False, False, False)
EXPECTED: dict[str, dict[str, tuple[bool, bool, bool]]] = {
    # cp creates each file with its source's mode: 0600 under umask 077.
    "mkdir-cp": {"022": ALL, "027": ALL, "077": TAKE},
    "mkdir-redirect": {"022": ALL, "027": ALL, "077": ALL},
    # These create (or chmod) each folder with its source's or archive's mode,
    # 0755, 0750 or 0700: the mask takes w, or everything, from automation.
    "cp-r": {"022": READ, "027": READ, "077": NONE},
    "tar-x": {"022": READ, "027": READ, "077": NONE},
    "unzip": {"022": READ, "027": READ, "077": NONE},
    "rsync-r": {"022": READ, "027": READ, "077": NONE},
    # Renamed in: no ACL at all, and the dropper's own group.
    "mv": {"022": READ, "027": NONE, "077": NONE},
    "tar-x-0775": {"022": ALL, "027": ALL, "077": ALL},
    "tar-x-chmod": {"022": ALL, "027": ALL, "077": ALL},
    "rsync-r-chmod": {"022": ALL, "027": ALL, "077": ALL},
}

# Run as automation: what it can do with each folder named, as JSON.
PROBE = """
import errno, json, os, sys
incoming, working, *names = sys.argv[1:]
FILES = {"a.csv": b"a\\n", "deep/b.csv": b"b\\n"}

def read(path, want):
    with open(path, "rb") as f:
        if f.read() != want:
            raise OSError(errno.EILSEQ, "changed")

seen = {}
for name in names:
    folder, errors = os.path.join(incoming, name), []
    def could(step, call, *args):
        try:
            call(*args)
            return True
        except OSError as exc:
            errors.append(f"{step}: {errno.errorcode[exc.errno]}")
            return False
    steps = [
        [could(f"read {f}", read, os.path.join(folder, f), want) for f, want in FILES.items()],
        [could(f"rename {f}", os.rename, os.path.join(folder, f),
               os.path.join(working, name + "-" + f.replace("/", "-"))) for f in FILES],
        [could(f"rmdir {d}", os.rmdir, d) for d in (os.path.join(folder, "deep"), folder)],
    ]
    seen[name] = [all(step) for step in steps] + [errors]
print(json.dumps(seen))
"""


def folder_name(writer: str, umask: str) -> str:
    return f"folders-{umask}-{writer}"


def installed(box: Container, *programs: str) -> bool:
    return all(
        box.run("sh", "-c", f"command -v {p}", check=False).returncode == 0 for p in programs
    )


Verdict = tuple[bool, bool, bool]


def drop_and_probe(
    box: Container, umask: str, writers: list[str]
) -> dict[str, tuple[Verdict, list[str]]]:
    """As the dropper under UMASK, each writer makes its folder; then what automation
    could do with it, and the errors it met."""
    script = PRELUDE + "".join(f"n={folder_name(w, umask)}\n{WRITERS[w][1]}\n" for w in writers)
    box.sh(script, umask, f"{STAGING}/{umask}", INCOMING, user=DROPPER)
    names = [folder_name(w, umask) for w in writers]
    done = box.run(
        "runuser", "-u", "automation", "--", "python3", "-c", PROBE, INCOMING, WORKING, *names
    )
    seen = json.loads(done.stdout)
    verdicts: dict[str, tuple[Verdict, list[str]]] = {}
    for writer in writers:
        read, moved, removed, errors = seen[folder_name(writer, umask)]
        verdicts[writer] = ((read, moved, removed), errors)
    return verdicts


def render(table: dict[str, dict[str, Verdict]]) -> list[str]:
    """One line per writer: what automation could do, per umask."""

    def cell(v: Verdict) -> str:
        return (
            "+".join(s for s, ok in zip(("read", "rename", "rmdir"), v, strict=True) if ok) or "-"
        )

    lines = [f"{'writer':62}" + "".join(f"umask {u:16}" for u in UMASKS)]
    for writer, row in table.items():
        label = WRITERS[writer][0]
        lines.append(f"{label:62}" + "".join(f"{cell(row[u]):22}" for u in UMASKS if u in row))
    return [line.rstrip() for line in lines]


@contextmanager
def service_stopped(box: Container) -> Iterator[None]:
    """The service stopped (whatever it does with folders does not race the probe), and
    the dropper's folders and the probe's files cleared away afterwards."""
    box.sh(f"install -d -o {DROPPER} -g {DROPPER} -m 0755 /home/{DROPPER}")
    box.systemctl("stop", UNIT)
    try:
        yield
    finally:
        box.sh(f"rm -rf {INCOMING}/folders-* {INCOMING}/.folders-* {WORKING}/folders-* {STAGING}")
        box.systemctl("reset-failed", UNIT, check=False)
        box.systemctl("start", UNIT)
        box.wait_active()


def test_incoming_default_acl_installed_restored_and_accepted(dropline: Container) -> None:
    """make install leaves the default ACL on incoming/; systemd-tmpfiles (as at boot) and
    make install run again restore it, keeping an operator's extra entry; without it a
    dropper's mkdir -p folder is automation's to read only, with it to empty and remove;
    `dropline check` accepts the tree."""
    box = dropline
    incoming = box.path(INCOMING)
    uid = box.run("id", "-u", "automation").stdout.strip()
    dropper_uid = int(box.run("id", "-u", DROPPER).stdout.strip())
    want = expected_default_acl(uid)
    assert read_acl(incoming) == want
    # incoming/ itself keeps its mode; its access ACL only adds the readers' r-x
    # (README, "Read-only access": status and top list it), the mask as the mode's
    # group bits were.
    readers = box.run("getent", "group", "dropline-readers").stdout.split(":")[2]
    st = incoming.stat()
    assert (oct(st.st_mode & 0o7777), read_acl(incoming, ACL_ACCESS)) == (
        "0o3770",
        ["user::rwx", "group::rwx", f"group:{readers}:r-x", "mask::rwx", "other::---"],
    )
    with service_stopped(box):
        os.removexattr(incoming, ACL_DEFAULT)
        assert read_acl(incoming) == []
        without = drop_and_probe(box, "022", ["mkdir-cp"])["mkdir-cp"]
        assert without[0] == READ, without

        # As systemd-tmpfiles-setup.service runs it at boot.
        box.run("systemd-tmpfiles", "--create", "--remove", "--boot", TMPFILES)
        assert read_acl(incoming) == want
        box.run("systemd-tmpfiles", "--create", TMPFILES)
        assert read_acl(incoming) == want, "a second run changed it"
        restored = drop_and_probe(box, "027", ["mkdir-cp"])["mkdir-cp"]
        assert restored[0] == ALL, restored

        # An operator's own entry stays, a changed entry of ours comes back.
        named = sorted([(0x02, 7, int(uid)), (0x02, 5, dropper_uid)], key=lambda e: e[2])
        write_acl(
            incoming,
            [(0x01, 7, NO_ID), *named, (0x04, 5, NO_ID), (0x10, 7, NO_ID), (0x20, 0, NO_ID)],
        )
        started = time.monotonic()
        box.run(
            "make", "-C", f"{INSIDE}/source", "install", f"WHEELHOUSE={INSIDE}/wheels", timeout=300
        )
        MEASURED.append(f"make install run again: {time.monotonic() - started:.1f} s")
        named_now = sorted([(int(uid), "rwx"), (dropper_uid, "r-x")])
        assert read_acl(incoming) == [
            "user::rwx", *(f"user:{i}:{bits}" for i, bits in named_now),
            "group::---", "mask::rwx", "other::---",
        ]  # fmt: skip
        os.removexattr(incoming, ACL_DEFAULT)
        box.run("systemd-tmpfiles", "--create", TMPFILES)
        assert read_acl(incoming) == want
    done = box.run(
        "runuser", "-u", "automation", "--", "/opt/automation/dropline/bin/dropline",
        "check", "--config", CONFIG, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note:" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_dropper_folders_by_writer_and_umask(dropline: Container) -> None:
    """As the dropper, each writer makes a folder under each umask; automation reads,
    renames out and removes what EXPECTED says, and nothing more.

    mkdir -p with cp or > under 022 and 027 is automation's to empty and remove;
    writers that give the folders 0755-like modes (cp -r, tar -x, unzip, rsync -r)
    leave automation read only, unless the folders are group-writable.
    """
    box = dropline
    writers = [w for w, (_, _, needs) in WRITERS.items() if installed(box, *needs)]
    missing = sorted(set(WRITERS) - set(writers))
    assert {"mkdir-cp", "tar-x"} <= set(writers), "tar is part of the base system"
    measured: dict[str, dict[str, Verdict]] = {w: {} for w in writers}
    errors: dict[tuple[str, str], list[str]] = {}
    with service_stopped(box):
        for umask in UMASKS:
            for writer, (verdict, met) in drop_and_probe(box, umask, writers).items():
                measured[writer][umask] = verdict
                errors[writer, umask] = met
    MEASURED.append("what automation can do with a dropper's folder (writer x umask):")
    MEASURED.extend("  " + line for line in render(measured))
    if missing:
        MEASURED.append(f"  not measured (not installed): {', '.join(missing)}")
    wrong = [
        f"  {writer} umask {umask}: expected {EXPECTED[writer][umask]}, saw {verdict}: "
        f"{errors[writer, umask]}"
        for writer, row in measured.items()
        for umask, verdict in row.items()
        if verdict != EXPECTED[writer][umask]
    ]
    assert not wrong, "\n".join([*render(measured), "differs from EXPECTED in:", *wrong])


# The configuration for folders: service.yaml, and an emptied folder removed soon.
FOLDER_SETTINGS = "recursive: true\nremove_empty_folders_after: 2s\n"


def batch_archive() -> bytes:
    """batch/a.csv and batch/deep/b.csv, folders stored 0775 and files 0664: as the
    table above shows, folders stored 0755 would leave automation unable to take them."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (
            ("batch", None),
            ("batch/a.csv", b"id,amount\n1,2.50\n"),
            ("batch/deep", None),
            ("batch/deep/b.csv", b"id,amount\n2,7.00\n"),
        ):
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time()) - 3600
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o775
                tar.addfile(info)
            else:
                info.mode, info.size = 0o664, len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_dropped_folder_archived_keeping_its_path_and_removed(dropline: Container) -> None:
    """A dropper's tar -x of batch/a.csv and batch/deep/b.csv: both archived under
    batch/ (their path kept), nothing left in working/, incoming/batch removed once
    empty for remove_empty_folders_after (2 s here)."""
    box = dropline
    original = box.path(SERVICE_CONFIG).read_bytes()
    archive_dir = box.path(f"{DATA}/archive")
    incoming_batch = box.path(f"{INCOMING}/batch")
    try:
        box.put(CONFIG, original + b"\n" + FOLDER_SETTINGS.encode())
        box.systemctl("restart", UNIT)
        box.wait_active()
        box.sh(f"tar -C {shlex.quote(INCOMING)} -xf -", input_data=batch_archive(), user=DROPPER)

        def archived() -> dict[str, Path] | None:
            found = {
                rel: p
                for rel in ("batch/a.csv", "batch/deep/b.csv")
                for p in archive_dir.rglob(rel.rsplit("/", 1)[1])
                if p.is_file() and p.as_posix().endswith("/" + rel)
            }
            return found if len(found) == 2 else None

        # Watch incoming/batch meanwhile: when it is first seen empty of files, and gone.
        emptied_at: float | None = None

        def gone() -> bool:
            nonlocal emptied_at
            if not incoming_batch.exists():
                return True
            try:
                empty = not any(p.is_file() for p in incoming_batch.rglob("*"))
            except OSError:  # a folder went while walked
                empty = False
            if emptied_at is None and empty:
                emptied_at = time.monotonic()
            return False

        def archived_while_watching() -> dict[str, Path] | None:
            gone()
            return archived()

        found = wait_until(archived_while_watching, 30, interval=0.05, what="batch archived")
        for rel, path in found.items():
            inner = path.relative_to(archive_dir).as_posix()
            # Flat, or under one level of date folders (archive_layout: daily).
            assert inner == rel or (inner.count("/") == rel.count("/") + 1), inner
            assert inner.endswith(rel), inner
        assert found["batch/a.csv"].read_bytes() == b"id,amount\n1,2.50\n"
        assert found["batch/deep/b.csv"].read_bytes() == b"id,amount\n2,7.00\n"
        working = box.path(WORKING)
        left = [p for p in working.rglob("*") if "batch" in p.parts or p.name in ("a.csv", "b.csv")]
        assert not left, left
        wait_until(gone, 15, interval=0.05, what=f"{INCOMING}/batch removed")
        assert emptied_at is not None
        waited = time.monotonic() - emptied_at
        assert waited >= 1.5, f"removed {waited:.2f} s after it was empty, before 2 s"
    finally:
        box.run("rm", "-rf", f"{INCOMING}/batch")
        box.put(CONFIG, original)
        box.systemctl("reset-failed", UNIT, check=False)
        box.systemctl("restart", UNIT, check=False)


def test_folder_the_daemon_cannot_empty_is_refused_until_its_writer_opens_it(
    dropline: Container,
) -> None:
    """A dropper's folder made 0755 (its group bits narrow the ACL to r-x): refused
    once, as a folder the dropline user cannot empty, its file left where it is;
    once the dropper gives it group write, its file is taken and archived."""
    box = dropline
    token = os.urandom(4).hex()
    folder = f"{INCOMING}/narrow-{token}"
    box.sh(
        f'mkdir -m 0755 {shlex.quote(folder)} && echo "id,amount" > {shlex.quote(folder)}/c.csv',
        user=DROPPER,
    )
    name = f"narrow-{token}"

    def refused() -> list[dict[str, Any]]:
        return box.journal("EVENT=entry.refused", f"FILE={name}")

    entries = wait_until(refused, 20, interval=0.1, what=f"{name} refused")
    assert "cannot empty" in entries[0]["REASON"], entries[0]
    assert box.path(f"{folder}/c.csv").read_text() == "id,amount\n"
    box.sh(f"chmod -R g+rwX {shlex.quote(folder)}", user=DROPPER)
    archive_dir = box.path(f"{DATA}/archive")
    wait_until(
        lambda: [p for p in archive_dir.rglob("c.csv") if p.parent.name == name],
        20,
        interval=0.1,
        what=f"{name}/c.csv archived",
    )
    assert len(refused()) == 1
