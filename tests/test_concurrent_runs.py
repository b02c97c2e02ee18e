"""Two `convlab train` runs given the same checkpoint or metrics file (or two benches the
same --json, two reports the same --out): the second is refused before it trains (each
would otherwise replace the other's file after every epoch, and the last to end would
erase the other's run), and a claim ends with its run. Readers are not refused: they see
whole versions."""

import errno
import fcntl
import json
import os
import signal

import pytest

from convlab.checkpoints import load_checkpoint
from convlab.files import sole_writer
from tests.test_checkpoints import RUN_SETTINGS, SMALL, make_checkpoint
from tests.test_cli import run_cli
from tests.test_interrupts import CHECKPOINT_WRITER, start, train_argv, wait_for_line
from tests.test_report import HISTORY


@pytest.mark.parametrize("claimed, argv", [
    ("--checkpoint {new}", ["--checkpoint", "{new}", *SMALL]),
    ("--resume {old}", ["--resume", "{old}", "--epochs", "3", "--progress", "no"]),
    ("--metrics-out {metrics}", ["--metrics-out", "{metrics}", *SMALL]),
])
def test_an_output_another_run_writes_is_refused_up_front(capsys, tmp_path, claimed, argv):
    paths = dict(new=tmp_path / "new.h5", old=tmp_path / "old.h5", metrics=tmp_path / "m.json")
    make_checkpoint(paths["old"], epochs_done=2)
    before = paths["old"].read_bytes()
    option, path = claimed.format(**paths).split()
    with sole_writer({option: path}):  # as another run holds it
        code, out, err = run_cli(capsys, "train", *[a.format(**paths) for a in argv])
    assert code == 2 and out == "" and err == (
        f"convlab: error: {option} {path} is being written by another convlab run (process {os.getpid()}); "
        "wait for it to end, or choose another path\n")
    assert paths["old"].read_bytes() == before and not paths["new"].exists() and not paths["metrics"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]  # the claim's lock file went with it


def test_a_lock_file_left_by_a_killed_run_is_claimed_again(tmp_path):
    lock = tmp_path / ".run.h5.lock"
    lock.write_text("999999\n")  # its process was killed: the file stays, its lock does not
    with sole_writer({"--checkpoint": tmp_path / "run.h5"}):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_a_run_that_fails_before_saving_leaves_no_folder_its_claim_made(tmp_path, capsys):
    """A missing folder of an output is made for its lock file; a mistake found then (no
    such data) must not leave it behind, empty. One the run wrote in stays."""
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tmp_path / "none.hdf5"), "--checkpoint",
                           str(tmp_path / "new" / "sub" / "run.h5"), "--metrics-out", str(tmp_path / "m" / "m.json"))
    assert code == 2 and "none.hdf5 does not exist" in err
    assert list(tmp_path.iterdir()) == []
    with sole_writer({"--json": tmp_path / "new" / "b.json"}):
        (tmp_path / "new" / "b.json").write_text("{}")
    assert [p.name for p in tmp_path.glob("**/*")] == ["new", "b.json"]


def test_a_folder_removed_by_a_run_ending_as_this_one_claims_is_made_again(tmp_path, monkeypatch):
    """Two runs claiming outputs in one new folder: the first, ending at once, removes it
    (it wrote nothing) between the second's making it and creating its lock file there."""
    real_open = os.open

    def open_after_the_other_run_left(path, *args):
        monkeypatch.setattr(os, "open", real_open)
        os.rmdir(os.path.dirname(path))
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", open_after_the_other_run_left)
    with sole_writer({"--checkpoint": tmp_path / "new" / "run.h5"}):
        assert (tmp_path / "new" / ".run.h5.lock").is_file()


def test_a_lock_file_that_cannot_be_removed_does_not_hide_the_run_s_own_error(tmp_path):
    """A folder made read-only during a run: the failed save is what the user must read."""
    lock = tmp_path / ".run.h5.lock"
    with pytest.raises(ValueError, match="^the run's own error$"):
        with sole_writer({"--checkpoint": tmp_path / "run.h5"}):
            lock.unlink()
            lock.mkdir()  # unlink() cannot remove it, as in a read-only folder
            raise ValueError("the run's own error")


def test_where_the_file_system_has_no_locks_the_run_goes_on_with_a_warning(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"--checkpoint .*run.h5: cannot lock .*\.run\.h5\.lock "
                                         r"\(No locks available\); another run writing"):
        with sole_writer({"--checkpoint": tmp_path / "run.h5"}):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_that_cannot_take_the_process_id_still_claims_the_output(tmp_path, monkeypatch):
    """A full disk when the claim writes its holder's process id: the claim holds anyway (the
    run's first save then says the disk is full), not a bare "[Errno 28]" naming no file."""
    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", disk_full)
        with sole_writer({"--checkpoint": tmp_path / "run.h5"}):
            patched.undo()
            with pytest.raises(ValueError, match=r"--checkpoint .*run.h5 is being written by another convlab run; "):
                with sole_writer({"--checkpoint": tmp_path / "run.h5"}):
                    pass
    assert list(tmp_path.iterdir()) == []


def test_a_running_training_keeps_its_checkpoint_from_a_second_run(tmp_path, tiny_data, capsys):
    path = tmp_path / "ck.h5"
    first = start(tmp_path, *train_argv(tiny_data, "--epochs", "100000", "--checkpoint", str(path)))
    wait_for_line(first, "epoch 1/")
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "100001", "--progress", "no")
    assert code == 2 and err.startswith(
        f"convlab: error: --resume {path} is being written by another convlab run (process {first.pid})")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    assert first.returncode == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "tiny.hdf5"]
    epochs = load_checkpoint(path).epoch
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", str(epochs + 1), "--progress", "no")
    assert code == 0, err
    assert load_checkpoint(path).epoch == epochs + 1


def test_a_bench_result_another_bench_writes_is_refused_before_timing(capsys, tmp_path):
    path = tmp_path / "b.json"
    with sole_writer({"--json": path}):
        code, out, err = run_cli(capsys, "bench", "--json", str(path), "--backends", "naive")
    assert code == 2 and out == "" and err.startswith(f"convlab: error: --json {path} is being written by another")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("claimed", ["--out {folder}/r.pdf", "--out's filters figure {folder}/r-filters.png"])
def test_a_report_another_report_writes_is_refused_before_it_renders(capsys, tmp_path, claimed):
    """Two reports to one --out would each replace the PDF and the PNGs beside it, and could
    leave one's PDF with the other's figures. Every figure name is claimed, also those
    this report does not draw: another report (from a checkpoint) may be writing it."""
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"backend": "im2col", "epochs": [m.as_dict() for m in HISTORY]}))
    *option, path = claimed.format(folder=tmp_path).split()
    with sole_writer({" ".join(option): path}):
        code, out, err = run_cli(capsys, "report", str(metrics), "--out", str(tmp_path / "r.pdf"))
    assert code == 2 and out == "" and err == (
        f"convlab: error: {' '.join(option)} {path} is being written by another convlab run "
        f"(process {os.getpid()}); wait for it to end, or choose another path\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    code, _, err = run_cli(capsys, "report", str(metrics), "--out", str(tmp_path / "r.pdf"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "r-curves.png", "r.pdf"]  # claims end with it


def test_a_reader_never_sees_half_a_checkpoint_being_rewritten(tmp_path):
    """What evaluate, predict and report do while a run saves: each read is one whole version."""
    path = tmp_path / "ck.h5"
    writer = start(tmp_path, "-c", CHECKPOINT_WRITER, str(path), json.dumps(RUN_SETTINGS))
    wait_for_line(writer, "1")
    epochs = []
    for _ in range(40):
        held = load_checkpoint(path)
        assert (held.weights["3.b"] == held.epoch).all()  # version k has every bias of layer 3 equal to k
        epochs.append(held.epoch)
    writer.kill()
    writer.communicate()
    assert epochs == sorted(epochs) and epochs[-1] > epochs[0]  # read while it was being rewritten
