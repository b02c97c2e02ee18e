"""How a `convlab train` run ends and what it prints, tried on real processes: a loss that
explodes while staying finite stops the run (exit 2, the last good checkpoint kept), SIGTERM
stops it like Ctrl-C (exit 143), and the progress bar is drawn only on a terminal."""

import errno
import fcntl
import os
import pty
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest

from convlab import registry
from convlab.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from convlab.cli import main
from convlab.data import Dataset
from convlab.layers import Dense, Flatten
from convlab.models import Sequential
from convlab.optimizers import SGD
from convlab.training import DIVERGED_BATCHES, DivergenceWatch, TrainingDiverged, fit
from tests.conftest import random_digits
from tests.test_cli import run_cli
from tests.test_interrupts import REPO, start, train_argv, wait_for_line


def convlab(tmp_path, *argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "convlab.cli", *argv], cwd=tmp_path, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300, **kwargs)


def test_a_loss_exploding_while_finite_stops_the_run(tmp_path):
    result = convlab(tmp_path, "train", "--lr", "1e6", "--epochs", "1", "--train-size", "2000", capture_output=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("convlab: error: training diverged: the loss stayed above 23 (10 times its "
                                    "chance level, log 10) for 3 batches")
    assert result.stderr.endswith("; try a lower learning rate (now 1000000.0)\n")
    assert len(result.stderr.splitlines()) == 1 and "test accuracy" not in result.stdout


def test_a_resumed_run_stops_for_divergence_where_an_uninterrupted_one_would(monkeypatch):
    """Losses above the bound (10 log 10 = 23) in the last 2 steps of epoch 1 and the first of
    epoch 2: a count carried across epochs stopped the uninterrupted run in epoch 2, while the
    run resumed after epoch 1 (a new count) went on. Each epoch now counts afresh."""
    losses = []

    def scripted_step(model, optimizer, x, y, watch):
        loss = losses.pop(0)
        watch.check(loss, 10)
        return loss, 0

    monkeypatch.setattr("convlab.training.train_step", scripted_step)
    data = Dataset(np.zeros((6, 1, 2, 2), np.float32), np.zeros(6, np.int64), np.zeros((2, 1, 2, 2), np.float32),
                   np.zeros(2, np.int64))  # 3 steps of 2 an epoch
    model = Sequential(Flatten(), Dense(4, 10, rng=0))
    losses[:] = [30.0, 1.0, 1.0]
    resumed = fit(model, SGD(model), data, 2, 2, 0, start_epoch=2, progress=False)
    losses[:] = [1.0, 30.0, 30.0, 30.0, 1.0, 1.0]
    straight = fit(model, SGD(model), data, 2, 2, 0, progress=False)
    assert [m.epoch for m in resumed] == [2] and [m.epoch for m in straight] == [1, 2]


def test_only_batches_exploding_in_a_row_stop_the_run():
    """A spike that recovers (at --lr 1 a batch reaches 16 log(classes)) is no divergence, however
    many an epoch has; DIVERGED_BATCHES batches in a row above the bound are."""
    watch = DivergenceWatch()
    for loss in [100.0, 1.0] * DIVERGED_BATCHES:
        watch.check(loss, 10)
    for _ in range(DIVERGED_BATCHES - 1):
        watch.check(100.0, 10)
    with pytest.raises(TrainingDiverged, match=f"for {DIVERGED_BATCHES} batches"):
        watch.check(100.0, 10)


def test_the_epoch_where_the_loss_exploded_is_not_saved(tmp_path, tiny_data):
    # One batch per epoch: the first loss is computed before any step, so epoch 1 ends in
    # bounds (and is saved); epoch 2's loss is astronomical.
    path = tmp_path / "ck.h5"
    result = convlab(tmp_path, "train", "--data-dir", str(tiny_data), "--batch-size", "64", "--lr", "1e6",
                     "--epochs", "5", "--progress", "False", "--checkpoint", str(path), capture_output=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("convlab: error: training diverged: the mean loss of epoch 2 was ")
    assert result.stderr.endswith(f"; {path} still holds the run after epoch 1\n")
    assert load_checkpoint(path).epoch == 1


def test_an_epoch_whose_last_update_overflowed_stops_the_run_and_is_not_saved(tmp_path, tiny_data):
    """One step at --lr 1e20: the loss was finite, the weights after the update gave NaN
    logits (numpy's overflow warnings, an accuracy of NaN's arg-max), and the epoch was saved
    with exit status 0; predict then failed on that checkpoint."""
    path = tmp_path / "ck.h5"
    result = convlab(tmp_path, "train", "--data-dir", str(tiny_data), "--batch-size", "64", "--lr", "1e20",
                     "--epochs", "1", "--progress", "False", "--checkpoint", str(path), capture_output=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("convlab: error: training diverged: after epoch 1, the network's outputs on "
                                    "the test images are not finite (its last updates overflowed); try a lower "
                                    "learning rate"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not path.exists()


def test_a_metrics_file_that_cannot_be_written_says_so_in_words(tmp_path, tiny_data, capsys, monkeypatch):
    def read_only_folder(path, obj):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.json.x.tmp"), None, str(path))

    monkeypatch.setattr("convlab.run.write_json", read_only_folder)
    path, metrics = tmp_path / "ck.h5", tmp_path / "m.json"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--batch-size", "32", "--epochs", "3",
                           "--progress", "no", "--checkpoint", str(path), "--metrics-out", str(metrics))
    assert code == 2 and err.startswith(f"convlab: error: cannot write --metrics-out {metrics}: Permission denied; "
                                        f"{path} holds the run after epoch 1; resume with: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "tiny.hdf5"]


def test_a_left_over_temporary_name_that_cannot_be_removed_does_not_stop_the_saves(tmp_path, tiny_data, capsys):
    """Clearing a killed writer's temporary files is a courtesy: one that cannot go (here a
    folder of that name) stopped the run with "cannot write --metrics-out None: Is a
    directory", naming an option not given."""
    (tmp_path / ".ck.h5.x1y2.tmp").mkdir()
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--batch-size", "32", "--epochs", "1",
                           "--progress", "no", "--checkpoint", str(path))
    assert code == 0, err
    assert load_checkpoint(path).epoch == 1


def test_a_failed_save_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path, tiny_data, capsys, monkeypatch):
    """A full disk, or a folder made read-only during the run: one line with the cause, what
    survived, and the command that goes on from it."""
    saves = []

    def full_disk_at_epoch_2(path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            raise CheckpointError(f"cannot write checkpoint {path}: No space left on device")
        save_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr("convlab.run.save_checkpoint", full_disk_at_epoch_2)
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--batch-size", "32", "--epochs", "3",
                           "--progress", "no", "--checkpoint", str(path))
    assert code == 2 and err == (
        f"convlab: error: cannot write checkpoint {path}: No space left on device; {path} holds the run "
        f"after epoch 1; resume with: convlab train --resume {path} --epochs 3 --backend im2col --data-dir "
        f"{tiny_data} --progress no\n")
    assert load_checkpoint(path).epoch == 1



# What h5py raised for a real full disk (a 2 MiB tmpfs) at the second save of a reference
# checkpoint: HDF5's report of the failed write(), over two lines, in an OSError with errno 28.
HDF5_FULL_DISK = ("Can't close file (file write failed: time = Wed Dec  2 15:50:14 2026\n, filename = "
                  "'{tmp}', file descriptor = 4, errno = 28, error message = 'No space left on device', "
                  "buf = 0x55a5ea634290, total write size = 2048, bytes this sub-write = 2048, offset = 4096)")


def test_a_full_disk_at_a_save_is_one_line_however_hdf5_words_it(tmp_path, tiny_data, capsys, monkeypatch):
    """The message was h5py's, over two lines (time, buffer address, offsets); the fake
    above raised a tidy one and missed it. Here h5py's own close fails as it did on a full
    tmpfs, at the second save: one line naming the cause, the first epoch's checkpoint
    intact, no temporary file left."""
    import h5py

    saves = []

    class FullAtSecondSave(h5py.File):  # h5py's module attribute: the data set's reads come here too
        def close(self):
            tmp = self.filename if self.id.valid else None
            super().close()
            if tmp is not None and tmp.endswith(".tmp"):
                saves.append(tmp)
                if len(saves) == 2:
                    raise OSError(errno.ENOSPC, HDF5_FULL_DISK.format(tmp=tmp))

    monkeypatch.setattr("convlab.checkpoints.h5py.File", FullAtSecondSave)
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--batch-size", "32", "--epochs", "3",
                           "--progress", "no", "--checkpoint", str(path))
    assert code == 2 and err.startswith(f"convlab: error: cannot write checkpoint {path}: No space left on device; "
                                        f"{path} holds the run after epoch 1; resume with: ")
    assert err.count("\n") == 1
    assert load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "tiny.hdf5"]


class Breaking:
    """im2col until its forward number ``at`` (one batch of tiny_data takes 2: the step and
    the test pass), then a contract broken (``"contract"``: a BackendError) or ``failure`` raised."""

    def __init__(self, at, failure):
        self.at, self.failure, self.calls = at, failure, 0

    def forward(self, x, w, b, stride, padding):
        self.calls += 1
        y, cache = registry.get_backend("im2col").impl.forward(x, w, b, stride, padding)
        if self.calls < self.at:
            return y, cache
        if self.failure == "contract":
            return y[:, :1], cache
        raise self.failure

    def backward(self, dy, cache, need_dx=True):
        return registry.get_backend("im2col").impl.backward(dy, cache, need_dx)


@pytest.fixture
def breaking():
    """Registers backend 'breaking' as ``breaking(at, failure)`` (a :class:`Breaking`)."""
    yield lambda at, failure: registry.register_backend("breaking")(Breaking(at, failure))
    registry._registry.pop("breaking", None)


def train_on_breaking(data, path):
    return ["train", "--data-dir", str(data), "--batch-size", "64", "--epochs", "3", "--progress", "no",
            "--backend", "breaking", "--checkpoint", str(path)]


def test_a_backend_that_breaks_mid_run_says_what_the_checkpoint_holds_and_resumes_on_another(
        tmp_path, tiny_data, capsys, breaking):
    breaking(3, "contract")  # in epoch 2
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, *train_on_breaking(tiny_data, path))
    command = (f"convlab train --resume {path} --epochs 3 --backend im2col --data-dir {tiny_data} "
               "--progress no")
    assert code == 2 and err.startswith(f"convlab: error: backend 'breaking' ({Breaking.__module__}.Breaking) is "
                                        "broken: its forward returned y (64, 1, 24, 24) float32")
    assert err.endswith(f"; use another backend, and tell its authors; {path} holds the run after epoch 1; "
                        f"resume with: {command}\n") and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, *shlex.split(command)[1:])
    assert code == 0 and "epoch 3/3" in out, err
    assert load_checkpoint(path).epoch == 3


def damaged_after_saving(monkeypatch):
    """Every checkpoint the run saves is then cut short, as a disk fault would leave it."""
    def save_then_damage(path, *args, **kwargs):
        save_checkpoint(path, *args, **kwargs)
        path = Path(path)
        path.write_bytes(path.read_bytes()[:5000])

    monkeypatch.setattr("convlab.run.save_checkpoint", save_then_damage)


def test_a_checkpoint_that_cannot_be_read_leaves_the_backend_s_error_whole(
        tmp_path, tiny_data, capsys, breaking, monkeypatch):
    breaking(3, "contract")  # in epoch 2
    damaged_after_saving(monkeypatch)
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, *train_on_breaking(tiny_data, path))
    assert code == 2 and err.startswith(f"convlab: error: backend 'breaking' ({Breaking.__module__}.Breaking) is "
                                        "broken: its forward returned y (64, 1, 24, 24) float32")
    assert f"; use another backend, and tell its authors; {path} could not be read (" in err
    assert err.endswith(f"), so which epoch it holds is not known; resume with: convlab train --resume {path} "
                        f"--epochs 3 --backend im2col --data-dir {tiny_data} --progress no\n")
    assert len(err.splitlines()) == 1


def test_a_backend_s_own_exception_keeps_its_message_when_the_checkpoint_cannot_be_read(
        tmp_path, tiny_data, breaking, monkeypatch):
    breaking(3, RuntimeError("the device is gone"))
    damaged_after_saving(monkeypatch)
    path = tmp_path / "ck.h5"
    with pytest.raises(RuntimeError) as raised:
        main(train_on_breaking(tiny_data, path))
    [note] = raised.value.__notes__
    assert str(raised.value) == "the device is gone" and note.startswith(f"{path} could not be read (")


def test_a_save_failing_in_a_folder_no_longer_searchable_keeps_its_own_message(
        tmp_path, tiny_data, capsys, monkeypatch):
    """The folder's x bit gone mid-run: the save fails, and so does looking whether the
    checkpoint is there (Path.exists raises EACCES on Python 3.11); the save's message stands."""
    path, real_stat = tmp_path / "ck.h5", os.stat

    def unsearchable(name, *args, **kwargs):
        if os.fspath(name) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))
        return real_stat(name, *args, **kwargs)

    def fails_and_leaves_the_folder_unsearchable(path, *args, **kwargs):
        monkeypatch.setattr(os, "stat", unsearchable)
        raise CheckpointError(f"cannot write checkpoint {path}: Permission denied")

    monkeypatch.setattr("convlab.run.save_checkpoint", fails_and_leaves_the_folder_unsearchable)
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--batch-size", "32", "--epochs", "3",
                           "--progress", "no", "--checkpoint", str(path))
    assert code == 2 and err == f"convlab: error: cannot write checkpoint {path}: Permission denied\n"


def test_a_backend_that_breaks_in_the_first_epoch_says_nothing_was_saved(tmp_path, tiny_data, capsys, breaking):
    breaking(1, "contract")
    path = tmp_path / "ck.h5"
    code, _, err = run_cli(capsys, *train_on_breaking(tiny_data, path))
    assert code == 2 and err.endswith(f"; use another backend, and tell its authors; no epoch had finished, so {path} "
                                      "was not written; start the run again\n")
    assert not path.exists()


def test_a_backend_that_raises_mid_run_keeps_its_traceback_which_ends_saying_how_to_resume(
        tmp_path, tiny_data, capsys, breaking):
    """Its own exception, from its own code (docs/plugins.md), the run resumed as it was."""
    breaking(3, RuntimeError("the device is gone"))
    path = tmp_path / "ck.h5"
    with pytest.raises(RuntimeError) as raised:
        main(train_on_breaking(tiny_data, path))
    assert str(raised.value) == "the device is gone"
    assert raised.value.__notes__ == [
        f"{path} holds the run after epoch 1; resume with: convlab train --resume {path} --epochs 3 --backend "
        f"breaking --data-dir {tiny_data} --progress no"]
    assert "".join(traceback.format_exception(raised.value)).endswith(raised.value.__notes__[0] + "\n")


def test_sigterm_stops_at_the_end_of_a_batch_keeps_the_checkpoint_and_says_how_to_resume(tmp_path, tiny_data):
    path = tmp_path / "ck.h5"
    process = start(tmp_path, *train_argv(tiny_data, "--epochs", "100000", "--checkpoint", str(path)))
    out = wait_for_line(process, "epoch 2/")
    os.kill(process.pid, signal.SIGTERM)
    rest, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM == 143, err
    assert "Traceback" not in err
    held = load_checkpoint(path)
    assert f"epoch {held.epoch}/100000" in out + rest
    assert err.splitlines()[-1] == (
        f"convlab: terminated; {path} holds the run after epoch {held.epoch}; resume with: convlab train --resume "
        f"{path} --epochs 100000 --backend im2col --data-dir {tiny_data} --progress no")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "tiny.hdf5"]  # no temp file left behind


def test_sigterm_before_any_epoch_ended_says_so(tmp_path):
    # Epoch 1 must outlast the test's reading "training on" and sending SIGTERM: 64 images took
    # 60 ms, which a busy machine can take to schedule the test process; 4096 take seconds (the
    # run stops within its first batches, so the test is no slower). Without -u: "training on"
    # is flushed as it is printed, not with epoch 1's line, after ck.h5 was written.
    data = random_digits(tmp_path / "tiny.hdf5", train=4096)
    process = start(tmp_path, *train_argv(data, "--epochs", "3", "--batch-size", "1", "--checkpoint", "ck.h5"))
    wait_for_line(process, "training on")
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    # Just before the first batch, SIGTERM stops the run where it is (as Ctrl-C would);
    # from the first batch on, at the end of a batch, saying what survived.
    assert err.splitlines()[-1] in ("convlab: terminated", "convlab: terminated; no epoch had finished, so ck.h5 "
                                                           "was not written; start the run again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.hdf5"]


TRAIN = ["train", "--batch-size", "8", "--epochs", "2"]


def test_piped_output_has_one_line_per_epoch_and_no_progress_bar(tmp_path, tiny_data):
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        result = convlab(tmp_path, *TRAIN, "--data-dir", str(tiny_data), stdout=out, stderr=subprocess.STDOUT)
    assert result.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "batch/s" not in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]


@pytest.mark.parametrize("progress, drawn", [([], True), (["--progress", "False"], False)])
def test_on_a_terminal_the_bar_is_drawn_unless_turned_off(tmp_path, tiny_data, progress, drawn):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns for the bar
    try:
        process = subprocess.Popen([sys.executable, "-m", "convlab.cli", *TRAIN, "--data-dir", str(tiny_data),
                                    *progress], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                   stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        seen = b""
        watchdog = threading.Timer(300, process.kill)  # a hung run ends the reading, not CI's time
        watchdog.start()
        try:
            while chunk := read_or_eof(controller):
                seen += chunk
        finally:
            watchdog.cancel()
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
    assert (b"\r" in seen and b"batch" in seen) == drawn, seen


def read_or_eof(fd):
    """The next bytes from a pseudo-terminal's controller; b"" once the other side is closed."""
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: no process holds the terminal any more
        return b""
