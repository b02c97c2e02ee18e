"""Atomic writes (convlab.files.atomic_paths): temporary files named for their writer, those
of killed writers removed at the next write and no others, several files written as one
result with one sync each, long names, and outputs that chattr makes irreplaceable,
refused before the work."""

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convlab import files
from convlab.checkpoints import check_new_checkpoint_path
from convlab.files import (
    TEMPORARY,
    atomic_path,
    atomic_paths,
    check_file_name,
    check_writable,
    hidden_stem,
    remove_abandoned_temporaries,
    sole_writer,
    writer,
)
from tests.conftest import SPECIAL_FILES, make_special_file
from tests.test_no_lost_work import assert_one_error_line, convlab

WRITER = """
import sys, time
from convlab.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_temporary_file_is_named_for_its_writer(tmp_path):
    target = tmp_path / "m.json"
    with atomic_path(target) as tmp:
        found = TEMPORARY.fullmatch(tmp.name[len(".m.json."):])
        assert tmp.name.startswith(".m.json.") and found is not None
        assert int(found["pid"]) == os.getpid() and found["host"] == writer().split("@")[1]
        assert found["namespace"] is None or os.stat("/proc/self/ns/pid").st_ino == int(found["namespace"])
        assert tmp.stat().st_mode & 0o777 == 0o600
        tmp.write_text("{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["m.json"]


def test_a_killed_writer_s_temporary_file_goes_at_the_next_write_and_a_live_one_s_stays(tmp_path):
    """Temporary files used to be mkstemp's, named for no one: one left by ``kill -9`` stayed
    forever, unless the path was a checkpoint, whose save removed every one, a live
    writer's too."""
    target = tmp_path / "m.json"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        live = Path(process.stdout.readline().strip())
        assert live.read_text() == "half"
        with atomic_path(target) as tmp:  # the other writer is alive: its file stays
            tmp.write_text("mine")
        assert live.exists() and target.read_text() == "mine"
    finally:
        process.kill()
        process.communicate()
    assert live.exists()  # left by the killed writer
    with atomic_path(target) as tmp:
        tmp.write_text("next")
    assert os.listdir(tmp_path) == ["m.json"] and target.read_text() == "next"


def fabricated(tmp_path) -> dict[str, Path]:
    """Temporary files beside ``tmp_path / "t.json"``, each from another kind of writer."""
    namespace, host = files._namespace_and_host()
    here = f"-{namespace}" if namespace else ""
    gone = dead_pid()
    names = {
        "dead": f".t.json.{gone}{here}@{host}.0123abcd.tmp",
        "live": f".t.json.{os.getppid()}{here}@{host}.0123abcd.tmp",
        "other host": f".t.json.{gone}{here}@{host}x.0123abcd.tmp",
        "other namespace": f".t.json.{gone}-4026530000@{host}.0123abcd.tmp",
        "unknown namespace": f".t.json.{gone}-x@{host}.0123abcd.tmp",
        "unnamed (0.11)": ".t.json.k3j2h1g0.tmp",
        "another file's": f".t.json.bak.{gone}{here}@{host}.0123abcd.tmp",
        "a folder": f".t.json.{gone}{here}@{host}.4567cdef.tmp",
    }
    paths = {kind: tmp_path / name for kind, name in names.items()}
    for kind, path in paths.items():
        path.mkdir() if kind == "a folder" else path.write_text(kind)
    return paths


def test_only_this_host_s_dead_writers_temporary_files_go(tmp_path):
    paths = fabricated(tmp_path)
    with atomic_path(tmp_path / "t.json") as tmp:
        tmp.write_text("{}")
    assert sorted(kind for kind, path in paths.items() if not path.exists()) == ["dead"]


def test_under_the_claim_every_temporary_file_of_the_path_goes(tmp_path):
    """A run holding the claim (sole_writer) is the only writer: every temporary file of the
    path is abandoned, whoever's, convlab 0.11's unnamed ones too; not another file's, nor
    a folder."""
    paths = fabricated(tmp_path)
    with sole_writer({"--out": tmp_path / "t.json"}):
        with atomic_path(tmp_path / "t.json") as tmp:
            tmp.write_text("{}")
    assert sorted(kind for kind, path in paths.items() if path.exists()) == ["a folder", "another file's"]


def test_the_claim_is_known_by_any_spelling_of_the_path(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    stale = tmp_path / "real" / ".t.json.k3j2h1g0.tmp"
    stale.write_text("0.11's")
    with sole_writer({"--out": tmp_path / "link" / "t.json"}):
        assert remove_abandoned_temporaries(tmp_path / "real" / "t.json") == [stale]
    stale.write_text("0.11's")
    assert remove_abandoned_temporaries(tmp_path / "real" / "t.json") == []  # the claim has ended


@pytest.mark.parametrize("name", ["r" * 250 + ".h5", "é" * 125 + ".h5", "r" * 150 + ".h5"])
def test_a_long_name_gets_a_short_stem_and_every_name_fits(tmp_path, name):
    target = tmp_path / name
    stem = hidden_stem(name)
    assert len(os.fsencode(stem)) + files.WRITER_ROOM <= 255
    if len(os.fsencode(name)) < 200:  # room enough
        assert stem == f".{name}"
    else:  # a hash of the whole name tells names with one start apart
        assert re.fullmatch(r"\.[ré]+~[0-9a-f]{16}", stem) and hidden_stem(name[:-1] + "x") != stem
    namespace, host = files._namespace_and_host()
    stale = tmp_path / f"{stem}.{dead_pid()}{'-' + namespace if namespace else ''}@{host}.0123abcd.tmp"
    stale.write_text("half")
    assert check_writable(target, "--checkpoint") == target
    with sole_writer({"--checkpoint": target}):
        assert (tmp_path / f"{stem}.lock").exists()
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f"{stem}.") and len(os.fsencode(tmp.name)) <= 255
            tmp.write_text("whole")
    assert os.listdir(tmp_path) == [name] and target.read_text() == "whole"


@pytest.mark.parametrize("check", [check_writable, check_file_name, check_new_checkpoint_path],
                         ids=["check_writable", "check_file_name", "check_new_checkpoint_path"])
@pytest.mark.parametrize("parts, which", [(["r" * 253 + ".h5"], "the file name"),
                                          (["f" * 256, "r.h5"], "a folder name in it")])
def test_a_name_longer_than_file_systems_allow_is_refused_up_front(tmp_path, parts, which, check):
    """It was a traceback: Python's ``is_dir()`` raises ENAMETOOLONG. Then, where the name
    was only checked for a folder first (``train --checkpoint``, ``bench --json``: the
    folder exists), a bare ``[Errno 36] File name too long``."""
    target = tmp_path.joinpath(*parts)
    with pytest.raises(ValueError, match=f"^--checkpoint {target}: {which} is 256 bytes long, over the 255 "
                                         r"a file system allows \(choose a shorter one\)$"):
        check(target, "--checkpoint") if check is not check_new_checkpoint_path else check(target)


@pytest.mark.parametrize("args, option", [(["train", "--epochs", "1", "--checkpoint", "a" * 256], "--checkpoint"),
                                          (["bench", "--json", "a" * 251 + ".json", "--kernel-sizes", "3"], "--json")])
def test_the_cli_refuses_a_name_too_long_in_one_line_before_any_work(tmp_path, args, option):
    code, out, err = convlab(*args, cwd=tmp_path)
    assert_one_error_line(code, err, f"convlab: error: {option} a", "is 256 bytes long, over the 255 a file system "
                                                                    "allows (choose a shorter one)")
    assert out == "" and os.listdir(tmp_path) == []


def fsynced(monkeypatch) -> list[str]:
    """The paths os.fsync is called on, from now on, in order."""
    synced, fsync = [], os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced


def test_several_files_are_synced_once_each_then_renamed_in_order(tmp_path, monkeypatch):
    targets = [tmp_path / "b.png", tmp_path / "sub" / "c.png", tmp_path / "a.pdf"]
    synced, renamed, replace = fsynced(monkeypatch), [], os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (renamed.append(Path(target)), replace(source, target)))
    with atomic_paths(*targets) as temps:
        assert [tmp.parent for tmp in temps] == [target.parent for target in targets]
        for target, tmp in zip(targets, temps):
            tmp.write_text(target.name)
    assert renamed == targets and all(target.read_text() == target.name for target in targets)
    assert synced == [*map(str, temps), str(tmp_path), str(tmp_path / "sub")]


def test_an_error_before_the_renames_changes_nothing_and_a_refused_rename_is_named(tmp_path, monkeypatch):
    targets = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for target in targets:
        target.write_text("old")
    with pytest.raises(OSError, match="No space"), atomic_paths(*targets) as temps:
        temps[0].write_text("new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [t.read_text() for t in targets] == ["old"] * 3 and sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
    replace = os.replace

    def refusing_b(source, target):
        if Path(target) == targets[1]:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(source), None, str(target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", refusing_b)
    with pytest.raises(PermissionError) as refused, atomic_paths(*targets) as temps:
        for tmp in temps:
            tmp.write_text("new")
    assert (refused.value.filename, refused.value.filename2) == (str(targets[1]), None)  # not the temporary file
    assert [t.read_text() for t in targets] == ["new", "old", "old"] and sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


# --- immutable and append-only outputs (chattr) ------------------------------------------

@pytest.fixture
def chattr(tmp_path):
    """``chattr(flag, path)``: set an inode flag (+i, +a), skipping the test where that
    cannot be done (not root, a file system without them); every flag set is cleared at
    the end, so that the folder can be removed."""
    flagged = []

    def set_flag(flag, path):
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr")
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr {flag} failed here: {done.stderr.strip()}")
        flagged.append(path)

    yield set_flag
    for path in reversed(flagged):
        subprocess.run(["chattr", "-i", "-a", str(path)], check=True)


@pytest.mark.parametrize("flag, word", [("+i", "immutable"), ("+a", "append-only")])
def test_an_immutable_or_append_only_file_is_refused_up_front(tmp_path, chattr, flag, word):
    target = tmp_path / "m.json"
    target.write_text('{"backend": "im2col", "epochs": []}')
    chattr(flag, target)
    letter = flag[1]
    with pytest.raises(ValueError, match=re.escape(
            f"--metrics-out {target}: {target} is {word} (chattr {flag}), so it cannot be replaced; clear the flag "
            f"with `chattr -{letter} {target}` (as root), or choose another path")):
        check_writable(target, "--metrics-out")
    with pytest.raises(PermissionError):  # what the check spares the user: the rename at the end fails
        with atomic_path(target) as tmp:
            tmp.write_text("{}")


@pytest.mark.parametrize("flag, word, means", [("+i", "immutable", "no file can be created in it"),
                                               ("+a", "append-only", "no file in it can be replaced")])
def test_an_immutable_or_append_only_folder_is_refused_up_front(tmp_path, chattr, flag, word, means):
    """An append-only folder took the probe file but would not let it go: the probe stayed."""
    folder = tmp_path / "out"
    folder.mkdir()
    chattr(flag, folder)
    for path in (folder / "r.pdf", folder / "sub" / "r.pdf"):
        with pytest.raises(ValueError, match=re.escape(f"--out {path}: {folder} is {word} (chattr {flag}), so {means}")):
            check_writable(path, "--out")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("argv", [
    ["train", "--metrics-out", "{tmp}/m.json", "--train-size", "64", "--test-size", "64", "--progress", "no"],
    ["report", "{tmp}/m.json", "--out", "{tmp}/r.pdf"],
])
def test_the_commands_refuse_an_immutable_output_in_one_line_before_any_work(tmp_path, chattr, argv):
    """The report's curves figure was found immutable only at its rename, after the rendering."""
    (tmp_path / "m.json").write_text('{"backend": "im2col", "epochs": []}')
    (tmp_path / "r-curves.png").write_bytes(files.PNG_SIGNATURE + b"earlier")
    immutable = tmp_path / ("r-curves.png" if argv[0] == "report" else "m.json")
    chattr("+i", immutable)
    code, out, err = convlab(*(a.format(tmp=tmp_path) for a in argv))
    assert_one_error_line(code, err, f"{immutable} is immutable (chattr +i), so it cannot be replaced; clear the "
                                     f"flag with `chattr -i {immutable}` (as root)")
    assert "training on" not in out and not (tmp_path / "r.pdf").exists()


def test_flags_are_not_read_where_they_cannot_be(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert files.inode_flags(fifo) == 0  # not opened: that would block
    assert files.inode_flags(tmp_path / "missing") == 0
    monkeypatch.setattr(files, "FS_IOC_GETFLAGS", None)  # another architecture
    assert files.inode_flags(tmp_path) == 0


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_an_output_naming_a_device_or_fifo_is_refused_and_left_alone(tmp_path, kind):
    """A device reads as empty, which is of any kind, so `bench --json` renamed its result
    over it (as root: `--json /dev/null` replaced the system's /dev/null)."""
    path = tmp_path / "out.json"
    still_there = make_special_file(path, kind)
    code, out, err = convlab("bench", "--json", path.name, "--kernel-sizes", "3", "--mnist-layer", "no", cwd=tmp_path)
    assert_one_error_line(code, err, f"--json {path.name} exists and is not a regular file (a device, a FIFO or a "
                                     "socket); refusing to replace it (choose another path)")
    assert still_there() and os.listdir(tmp_path) == [path.name]
